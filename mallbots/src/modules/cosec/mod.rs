//! **cosec**: the create-order saga (orchestration), on Herald's [`saga`](herald::saga).
//!
//! Started by `OrderCreated` (in the handler's transaction, so it starts if and only if the
//! event is handled; errors are returned, never swallowed — **fix**). Steps, as the spec's
//! table: 0 — (compensation RejectOrder); 1 AuthorizeCustomer; 2 CreateShoppingList (keeps the
//! list id; compensation CancelShoppingList); 3 ConfirmPayment (amount = order total);
//! 4 InitiateShopping; 5 ApproveOrder. A failure reply walks back from the step before the
//! failed one; a step with no reply within [`STEP_TIMEOUT`] counts as failed (**new**).

use std::sync::Arc;
use std::time::Duration;

use herald::asyncapi::AsyncApi;
use herald::router::{HandlerContext, Route};
use herald::saga::{Orchestrator, Saga, SagaError, Step};
use herald::{Message, Store, SubscribeOptions};
use serde::{Deserialize, Serialize};

use crate::module::{Module, ModuleContext, Parts};
use crate::modules::customers::api as customers;
use crate::modules::depot::api as depot;
use crate::modules::ordering::api as ordering;
use crate::modules::payments::api as payments;

/// The saga's name (keys its stored instances).
pub const SAGA_NAME: &str = "create-order";
/// Where the participants reply.
pub const REPLY_TOPIC: &str = "cosec.replies.CreateOrder";
/// How long a step waits for its reply before the saga compensates.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the saga knows about its order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrderData {
    pub order_id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub items: Vec<ordering::OrderItem>,
    pub total_cents: i64,
    /// Set by depot's reply to step 2.
    pub shopping_id: Option<String>,
}

impl CreateOrderData {
    fn shopping_id(&self) -> Result<String, SagaError> {
        self.shopping_id.clone().ok_or_else(|| SagaError::step("create-shopping-list", "no shopping list id yet"))
    }
}

fn command<E: herald::Event>(topic: &str, key: &str, command: &E) -> Result<Message, SagaError> {
    Ok(Message::encode(topic, command)?.with_key(key))
}

/// The create-order saga.
pub fn saga() -> Saga<CreateOrderData> {
    Saga::new(SAGA_NAME, REPLY_TOPIC)
        .timeout(STEP_TIMEOUT)
        .step(Step::new("reject-order").compensation(|d: &CreateOrderData| {
            command(ordering::COMMAND_TOPIC, &d.order_id, &ordering::RejectOrder { id: d.order_id.clone() })
        }))
        .step(Step::new("authorize-customer").action(|d: &CreateOrderData| {
            command(
                customers::COMMAND_TOPIC,
                &d.customer_id,
                &customers::AuthorizeCustomer { id: d.customer_id.clone() },
            )
        }))
        .step(
            Step::new("create-shopping-list")
                .action(|d: &CreateOrderData| {
                    let items = d
                        .items
                        .iter()
                        .map(|i| depot::ShoppingItem {
                            store_id: i.store_id.clone(),
                            store_name: i.store_name.clone(),
                            product_id: i.product_id.clone(),
                            product_name: i.product_name.clone(),
                            quantity: i.quantity,
                        })
                        .collect();
                    command(
                        depot::COMMAND_TOPIC,
                        &d.order_id,
                        &depot::CreateShoppingList { order_id: d.order_id.clone(), items },
                    )
                })
                .on_reply(|d: &mut CreateOrderData, reply: depot::CreatedShoppingList| {
                    d.shopping_id = Some(reply.id);
                    Ok(())
                })
                .compensation(|d: &CreateOrderData| {
                    command(depot::COMMAND_TOPIC, &d.order_id, &depot::CancelShoppingList { id: d.shopping_id()? })
                }),
        )
        .step(Step::new("confirm-payment").action(|d: &CreateOrderData| {
            command(
                payments::COMMAND_TOPIC,
                &d.payment_id,
                &payments::ConfirmPayment { id: d.payment_id.clone(), amount_cents: d.total_cents },
            )
        }))
        .step(Step::new("initiate-shopping").action(|d: &CreateOrderData| {
            command(depot::COMMAND_TOPIC, &d.order_id, &depot::InitiateShopping { id: d.shopping_id()? })
        }))
        .step(Step::new("approve-order").action(|d: &CreateOrderData| {
            command(
                ordering::COMMAND_TOPIC,
                &d.order_id,
                &ordering::ApproveOrder { id: d.order_id.clone(), shopping_id: d.shopping_id()? },
            )
        }))
}

/// cosec in the list of modules.
pub const MODULE: Module = Module {
    name: "cosec",
    about: "the create-order saga: authorizes the customer, books the shopping list, confirms the payment",
    http_prefixes: &[],
    grpc_services: &[],
    migrations: &[],
    routes: |cx| routes(&orchestrator(cx.store.clone())),
    messages,
    start,
};

/// How often the saga looks for steps whose reply is overdue.
const TIMEOUT_SCAN: Duration = Duration::from_secs(1);

fn start(cx: &ModuleContext) -> Parts {
    // One replica scans at a time (a lease); another takes over when it stops or dies.
    let timeouts = orchestrator(cx.store.clone()).run_timeouts_leased(
        cx.instance.to_string(),
        crate::module::LEASE_TTL,
        TIMEOUT_SCAN,
        cx.stop.clone(),
    );
    Parts {
        tasks: vec![(
            "saga timeouts",
            Box::pin(async move {
                timeouts.await;
                Ok(())
            }),
        )],
        ..Parts::default()
    }
}

/// The orchestrator of the create-order saga on `store`.
pub fn orchestrator(store: Arc<dyn Store>) -> Orchestrator<CreateOrderData> {
    Orchestrator::new(saga(), store)
}

/// The message routes of cosec: start on OrderCreated, move on replies.
fn routes(orchestrator: &Orchestrator<CreateOrderData>) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "cosec-ordering")).on_with(
            orchestrator.clone(),
            async |cx: &mut HandlerContext,
                   event: ordering::OrderCreated,
                   orchestrator: &Orchestrator<CreateOrderData>| {
                let cause = cx.message().clone();
                let data = CreateOrderData {
                    order_id: event.id.clone(),
                    customer_id: event.customer_id,
                    payment_id: event.payment_id,
                    items: event.items,
                    total_cents: event.total_cents,
                    shopping_id: None,
                };
                orchestrator.start(cx.tx()?, &event.id, data, Some(&cause)).await?;
                Ok(())
            },
        ),
        Route::new(SubscribeOptions::new(REPLY_TOPIC, "cosec-replies")).fallback(orchestrator.reply_handler()),
    ]
}

/// What cosec sends (the saga's commands) and handles (orders to start from, replies).
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<customers::AuthorizeCustomer>(customers::COMMAND_TOPIC)
        .sends::<depot::DepotCommand>(depot::COMMAND_TOPIC)
        .sends::<payments::ConfirmPayment>(payments::COMMAND_TOPIC)
        .sends::<ordering::OrderingCommand>(ordering::COMMAND_TOPIC)
        .receives::<ordering::OrderCreated>(ordering::EVENT_TOPIC, "cosec-ordering")
        .receives_replies::<depot::CreatedShoppingList>(REPLY_TOPIC, "cosec-replies")
}

#[cfg(test)]
mod tests {
    use herald::command::Reply;
    use herald::saga::SagaStatus;
    use herald::saga::testing::SagaTest;

    use super::*;

    fn data() -> CreateOrderData {
        CreateOrderData {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            payment_id: "pay-1".into(),
            items: vec![ordering::OrderItem {
                store_id: "s-1".into(),
                product_id: "p-1".into(),
                store_name: "Books".into(),
                product_name: "Treasury".into(),
                price_cents: 999,
                quantity: 2,
            }],
            total_cents: 1998,
            shopping_id: None,
        }
    }

    fn created() -> Reply {
        Reply::with(&depot::CreatedShoppingList { id: "sl-1".into() }).expect("encodes")
    }

    #[tokio::test]
    async fn every_step_succeeding_approves_the_order() {
        let mut t = SagaTest::start(saga(), "o-1", data()).await.expect("starts");
        assert_eq!(t.sent_name(), Some(<customers::AuthorizeCustomer as herald::Event>::NAME));
        t.reply(Reply::success()).await.expect("moves");
        assert_eq!(t.sent_name(), Some(<depot::CreateShoppingList as herald::Event>::NAME));
        t.reply(created()).await.expect("moves");
        assert_eq!(t.sent_name(), Some(<payments::ConfirmPayment as herald::Event>::NAME));
        let confirm: payments::ConfirmPayment = serde_json::from_slice(&t.sent()[0].payload).expect("decodes");
        assert_eq!(confirm, payments::ConfirmPayment { id: "pay-1".into(), amount_cents: 1998 });
        t.reply(Reply::success()).await.expect("moves");
        assert_eq!(t.sent_name(), Some(<depot::InitiateShopping as herald::Event>::NAME));
        t.reply(Reply::success()).await.expect("moves");
        assert_eq!(t.sent_name(), Some(<ordering::ApproveOrder as herald::Event>::NAME));
        let approve: ordering::ApproveOrder = serde_json::from_slice(&t.sent()[0].payload).expect("decodes");
        assert_eq!(approve.shopping_id, "sl-1");
        t.reply(Reply::success()).await.expect("moves");
        assert_eq!(t.status().await.expect("status"), SagaStatus::Completed);
    }

    #[tokio::test]
    async fn an_unauthorized_customer_rejects_the_order() {
        let mut t = SagaTest::start(saga(), "o-1", data()).await.expect("starts");
        t.reply(Reply::failure("the customer is disabled")).await.expect("moves");
        assert_eq!(t.sent_name(), Some(<ordering::RejectOrder as herald::Event>::NAME));
        t.reply(Reply::success()).await.expect("moves");
        let instance = t.instance().await.expect("instance");
        assert_eq!(instance.status, SagaStatus::Compensated);
        assert!(instance.failure.as_deref().unwrap_or_default().contains("disabled"));
    }

    #[tokio::test]
    async fn a_refused_payment_cancels_the_shopping_list_and_rejects_the_order() {
        let mut t = SagaTest::start(saga(), "o-1", data()).await.expect("starts");
        t.reply(Reply::success()).await.expect("moves");
        t.reply(created()).await.expect("moves");
        t.reply(Reply::failure("unknown payment")).await.expect("moves");
        assert_eq!(t.sent_name(), Some(<depot::CancelShoppingList as herald::Event>::NAME));
        let cancel: depot::CancelShoppingList = serde_json::from_slice(&t.sent()[0].payload).expect("decodes");
        assert_eq!(cancel.id, "sl-1");
        t.reply(Reply::success()).await.expect("moves");
        assert_eq!(t.sent_name(), Some(<ordering::RejectOrder as herald::Event>::NAME));
        t.reply(Reply::success()).await.expect("moves");
        assert_eq!(t.status().await.expect("status"), SagaStatus::Compensated);
    }

    #[tokio::test]
    async fn a_step_without_a_reply_times_out_and_compensates() {
        let mut t = SagaTest::start(saga(), "o-1", data()).await.expect("starts");
        t.reply(Reply::success()).await.expect("moves");
        t.reply(created()).await.expect("moves");
        assert_eq!(t.time_out().await.expect("expires"), 1);
        assert_eq!(t.sent_name(), Some(<depot::CancelShoppingList as herald::Event>::NAME));
    }
}
