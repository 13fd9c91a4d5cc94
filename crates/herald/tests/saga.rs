//! The saga engine in given/when/then form, on the book's create-order saga: which commands go
//! out, in which order, and what is compensated when each step fails.

use herald::Message;
use herald::codec::Event;
use herald::command::Reply;
use herald::saga::testing::SagaTest;
use herald::saga::{Handled, Saga, SagaError, SagaStatus, Step};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CreateOrder {
    order_id: String,
    shopping_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CreatedShoppingList {
    id: String,
}

impl Event for CreatedShoppingList {
    const NAME: &'static str = "depot.CreatedShoppingList.v1";
}

fn command(topic: &str, name: &str) -> impl Fn(&CreateOrder) -> Result<Message, SagaError> + Send + Sync + 'static {
    let (topic, name) = (topic.to_owned(), name.to_owned());
    move |order: &CreateOrder| {
        let payload = serde_json::to_vec(order).map_err(|e| SagaError::step(&name, e))?;
        Ok(Message::new(&topic, &name, payload).with_key(&order.order_id))
    }
}

/// The create-order saga of the book (step 0 only compensates).
fn create_order() -> Saga<CreateOrder> {
    Saga::new("cosec.CreateOrder", "cosec.replies")
        .step(Step::new("reject-order").compensation(command("ordering.commands", "RejectOrder")))
        .step(Step::new("authorize-customer").action(command("customers.commands", "AuthorizeCustomer")))
        .step(
            Step::new("create-shopping-list")
                .action(command("depot.commands", "CreateShoppingList"))
                .on_reply::<CreatedShoppingList>(|order, reply| {
                    order.shopping_id = Some(reply.id);
                    Ok(())
                })
                .compensation(command("depot.commands", "CancelShoppingList")),
        )
        .step(Step::new("confirm-payment").action(command("payments.commands", "ConfirmPayment")))
        .step(Step::new("initiate-shopping").action(command("depot.commands", "InitiateShopping")))
        .step(Step::new("approve-order").action(command("ordering.commands", "ApproveOrder")))
}

fn order() -> CreateOrder {
    CreateOrder { order_id: "order-1".into(), shopping_id: None }
}

async fn succeed(t: &mut SagaTest<CreateOrder>) {
    let reply = if t.sent_name() == Some("CreateShoppingList") {
        Reply::with(&CreatedShoppingList { id: "list-9".into() }).expect("encode")
    } else {
        Reply::success()
    };
    assert!(matches!(t.reply(reply).await.expect("reply"), Handled::Advanced(_)));
}

#[tokio::test]
async fn every_step_succeeding_sends_each_action_once_in_order_and_completes() {
    let mut t = SagaTest::start(create_order(), "s-1", order()).await.expect("start");
    let mut sent = Vec::new();
    while let Some(name) = t.sent_name() {
        sent.push(name.to_owned());
        let command = &t.sent()[0];
        assert_eq!(command.header("herald-reply-to"), Some("cosec.replies"));
        assert_eq!(command.header("herald-saga-id"), Some("s-1"));
        succeed(&mut t).await;
    }
    assert_eq!(sent, ["AuthorizeCustomer", "CreateShoppingList", "ConfirmPayment", "InitiateShopping", "ApproveOrder"]);
    let instance = t.instance().await.expect("instance");
    assert_eq!(instance.status, SagaStatus::Completed);
    assert_eq!(instance.data.shopping_id.as_deref(), Some("list-9"), "the typed reply was kept");
}

/// The book's table: what gets compensated, by failed step.
#[tokio::test]
async fn a_failure_at_each_step_compensates_exactly_the_earlier_steps() {
    let expected: [(usize, &[&str]); 5] = [
        (1, &["RejectOrder"]),
        (2, &["RejectOrder"]),
        (3, &["CancelShoppingList", "RejectOrder"]),
        (4, &["CancelShoppingList", "RejectOrder"]),
        (5, &["CancelShoppingList", "RejectOrder"]),
    ];
    for (failing_step, compensations) in expected {
        let mut t = SagaTest::start(create_order(), "s-1", order()).await.expect("start");
        for _ in 1..failing_step {
            succeed(&mut t).await;
        }
        t.reply(Reply::failure("no")).await.expect("failure reply");
        let mut sent = Vec::new();
        while let Some(name) = t.sent_name() {
            sent.push(name.to_owned());
            t.reply(Reply::success()).await.expect("compensation reply");
        }
        assert_eq!(sent, compensations, "failure at step {failing_step}");
        let instance = t.instance().await.expect("instance");
        assert_eq!(instance.status, SagaStatus::Compensated);
        assert!(instance.failure.as_deref().unwrap_or_default().contains("failed: no"), "{instance:?}");
    }
}

#[tokio::test]
async fn a_duplicate_or_late_reply_is_ignored() {
    let mut t = SagaTest::start(create_order(), "s-1", order()).await.expect("start");
    let authorize = t.sent()[0].clone();
    succeed(&mut t).await;
    assert_eq!(t.sent_name(), Some("CreateShoppingList"));
    let duplicate = Reply::success().to_message(&authorize).expect("reply");
    assert_eq!(
        t.deliver(&duplicate).await.expect("deliver"),
        Handled::Ignored("not the current step (late or duplicate reply)")
    );
    let late_failure = Reply::failure("too late").to_message(&authorize).expect("reply");
    assert!(matches!(t.deliver(&late_failure).await.expect("deliver"), Handled::Ignored(_)));
    assert_eq!(t.status().await.expect("status"), SagaStatus::Running, "nothing moved");
    let stranger = Message::new("cosec.replies", "Other", Vec::new()).with_header("herald-reply-outcome", "success");
    assert_eq!(t.deliver(&stranger).await.expect("deliver"), Handled::Ignored("not a reply of this saga"));
}

#[tokio::test]
async fn a_timed_out_step_compensates_and_a_timed_out_compensation_is_sent_again() {
    let mut t = SagaTest::start(create_order(), "s-1", order()).await.expect("start");
    succeed(&mut t).await;
    succeed(&mut t).await;
    assert_eq!(t.sent_name(), Some("ConfirmPayment"));
    assert_eq!(t.time_out().await.expect("time out"), 1);
    assert_eq!(t.sent_name(), Some("CancelShoppingList"));
    assert!(t.instance().await.expect("instance").failure.unwrap_or_default().contains("timed out"));
    assert_eq!(t.time_out().await.expect("time out"), 1);
    assert_eq!(t.sent_name(), Some("CancelShoppingList"), "the compensation is sent again");
    t.reply(Reply::success()).await.expect("reply");
    assert_eq!(t.sent_name(), Some("RejectOrder"));
}

#[tokio::test]
async fn a_refused_compensation_is_an_error_and_the_saga_waits_on_it() {
    let mut t = SagaTest::start(create_order(), "s-1", order()).await.expect("start");
    succeed(&mut t).await;
    succeed(&mut t).await;
    t.reply(Reply::failure("card declined")).await.expect("failure");
    assert_eq!(t.sent_name(), Some("CancelShoppingList"));
    let err = t.reply(Reply::failure("list already shipped")).await.expect_err("cannot compensate");
    assert!(matches!(err, SagaError::CompensationFailed { .. }), "{err}");
    assert!(err.to_string().contains("list already shipped"));
    assert_eq!(t.status().await.expect("status"), SagaStatus::Compensating, "still waiting on the compensation");
}
