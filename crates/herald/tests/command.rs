//! Command handlers always reply: success, a typed reply, a business failure, and a permanent
//! error (rolled back, answered with a failure) — end to end through the router, the outbox and
//! the in-memory broker.

use std::sync::Arc;
use std::time::Duration;

use herald::command::{self, Outcome, REPLY_REASON, Reply};
use herald::memory::{MemoryBroker, MemoryStore};
use herald::outbox::OutboxRelay;
use herald::pubsub::{StartFrom, SubscribeOptions, Subscriber};
use herald::router::{HandlerContext, HandlerError, Inbox, Route, Router};
use herald::store::{ExpectedVersion, NewEvent, Store};
use herald::{Event, Message};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reserve {
    sku: String,
    qty: u32,
}
impl Event for Reserve {
    const NAME: &'static str = "stock.Reserve.v1";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reserved {
    reservation: String,
}
impl Event for Reserved {
    const NAME: &'static str = "stock.Reserved.v1";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_gets_exactly_one_reply_and_failures_roll_back() {
    let broker = MemoryBroker::in_memory();
    let store = Arc::new(MemoryStore::new());
    let route = Route::new(SubscribeOptions::new("stock.commands", "stock").start(StartFrom::Beginning)).on_command(
        async |cx: &mut HandlerContext, cmd: Reserve| {
            // The handler's own change, which must vanish if it then fails.
            let event = NewEvent::encode(&Reserved { reservation: cmd.sku.clone() })?;
            cx.tx()?.append(&format!("stock-{}", cmd.sku), ExpectedVersion::Any, vec![event]).await?;
            match cmd.qty {
                0 => Ok(Reply::failure("nothing to reserve")),
                1..=10 => Ok(Reply::with(&Reserved { reservation: format!("r-{}", cmd.sku) })?),
                _ => Err(HandlerError::permanent("the warehouse database rejected the row")),
            }
        },
    );
    let shutdown = CancellationToken::new();
    let router = Router::new(Arc::new(broker.clone())).store(store.clone()).middleware(Inbox).route(route);
    let router_task = tokio::spawn(router.run(shutdown.clone()));
    let relay_task = tokio::spawn(OutboxRelay::new(store.clone(), Arc::new(broker.clone())).run(shutdown.clone()));
    let mut replies = broker
        .subscribe(SubscribeOptions::new("replies", "asker").start(StartFrom::Beginning))
        .await
        .expect("subscribe");

    let commands = [
        ("ok", Message::encode("stock.commands", &Reserve { sku: "ok".into(), qty: 2 }).expect("encode")),
        ("refused", Message::encode("stock.commands", &Reserve { sku: "refused".into(), qty: 0 }).expect("encode")),
        ("broken", Message::encode("stock.commands", &Reserve { sku: "broken".into(), qty: 99 }).expect("encode")),
        ("garbage", Message::new("stock.commands", Reserve::NAME, b"not json".to_vec())),
    ];
    let mut tx = store.begin().await.expect("begin");
    let sent: Vec<Message> = commands
        .iter()
        .map(|(_, m)| command::expect_reply(m.clone(), "replies").with_header("herald-saga-id", "s-7"))
        .collect();
    tx.enqueue(sent.clone()).await.expect("enqueue");
    tx.commit().await.expect("commit");

    let mut got = Vec::new();
    for _ in 0..commands.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("a reply in time")
            .expect("open");
        got.push(d.message.clone());
        d.ack().await.expect("ack");
    }
    let reply_to = |label: &str| {
        let index = commands.iter().position(|(l, _)| *l == label).expect("label");
        got.iter().find(|r| r.metadata.causation_id == Some(sent[index].id)).cloned().expect("a reply to each command")
    };

    let ok = reply_to("ok");
    assert_eq!((Outcome::of(&ok), ok.name.as_str()), (Some(Outcome::Success), Reserved::NAME));
    assert_eq!(ok.header("herald-saga-id"), Some("s-7"), "saga headers travel back");
    let refused = reply_to("refused");
    assert_eq!(Outcome::of(&refused), Some(Outcome::Failure));
    assert_eq!(refused.header(REPLY_REASON), Some("nothing to reserve"));
    let broken = reply_to("broken");
    assert_eq!(Outcome::of(&broken), Some(Outcome::Failure));
    assert!(broken.header(REPLY_REASON).unwrap_or_default().contains("rejected the row"), "{broken:?}");
    let garbage = reply_to("garbage");
    assert_eq!(Outcome::of(&garbage), Some(Outcome::Failure));
    assert!(garbage.header(REPLY_REASON).unwrap_or_default().contains("does not decode"), "{garbage:?}");

    let versions = |sku: &'static str| {
        let store = store.clone();
        async move { store.read_stream(&format!("stock-{sku}"), 1, 10).await.expect("read").len() }
    };
    assert_eq!(versions("ok").await, 1, "a success commits the handler's change");
    assert_eq!(versions("refused").await, 1, "a business failure is an answer: the handler decides what it keeps");
    assert_eq!(versions("broken").await, 0, "a permanent error rolls the handler's change back");

    assert!(tokio::time::timeout(Duration::from_millis(300), replies.next()).await.is_err(), "one reply each");
    shutdown.cancel();
    router_task.await.expect("join").expect("router");
    relay_task.await.expect("join");
}
