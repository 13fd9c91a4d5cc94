//! The acceptance test of issue 4 (tracing): one trace id spans producer → consumer → command
//! → reply across several subscriptions, and the parent/child links follow the message chain.
//!
//! ```text
//! producer span ── enqueue OrderPlaced ──► outbox ── relay ──► orders
//!   orders/billing:       handle OrderPlaced  ── publish ChargePayment ──► payments.commands
//!   payments.commands/payments: handle ChargePayment ── publish PaymentCharged ──► payments.replies
//!   payments.replies/billing-replies: handle PaymentCharged (the reply)
//! ```
//!
//! and, with a saga in the middle:
//!
//! ```text
//! producer ──► handle OrderPlaced (starts the saga) ──► handle Charge (participant)
//!          ──► handle Success (the saga's reply) ──► handle Notify (the saga's next step)
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::memory::{MemoryBroker, MemoryStore};
use herald::outbox::OutboxRelay;
use herald::router::{Handler, HandlerContext, HandlerError, Route, Router};
use herald::{Message, StartFrom, Store, SubscribeOptions};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Publishes `next` (a message on `topic` named `name`) in reply to whatever it handles.
struct Forward {
    topic: &'static str,
    name: &'static str,
}

#[async_trait]
impl Handler for Forward {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let key = cx.message().key.clone();
        cx.publish(vec![Message::new(self.topic, self.name, b"{}".to_vec()).with_key(key)]).await
    }
}

/// Hands the reply to the test.
struct Done(mpsc::Sender<Message>);

#[async_trait]
impl Handler for Done {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        self.0.send(cx.message().clone()).await.map_err(HandlerError::permanent)
    }
}

fn subscription(topic: &str, group: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic, group).start(StartFrom::Beginning)
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn one_trace_follows_a_request_through_a_command_and_its_reply_across_subscriptions() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(herald_otel::layer(&provider));
    // A current-thread runtime: every task runs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryBroker::in_memory());
    let (replies, mut replied) = mpsc::channel(1);
    let router = Router::new(broker.clone())
        .store(store.clone())
        .route(
            Route::new(subscription("orders", "billing"))
                .on_name("OrderPlaced", Forward { topic: "payments.commands", name: "ChargePayment" }),
        )
        .route(
            Route::new(subscription("payments.commands", "payments"))
                .on_name("ChargePayment", Forward { topic: "payments.replies", name: "PaymentCharged" }),
        )
        .route(
            Route::new(subscription("payments.replies", "billing-replies")).on_name("PaymentCharged", Done(replies)),
        );
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(store.clone(), broker.clone());
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(router.run(shutdown.clone()));
    tasks.spawn(relay.run(shutdown.clone()));

    // The producer: a command handler of some API, writing its event through the outbox.
    let order = Message::new("orders", "OrderPlaced", br#"{"order":"o-1"}"#.to_vec()).with_key("o-1");
    let order_id = order.id;
    async {
        let mut tx = store.begin().await.expect("begin");
        tx.enqueue(vec![order]).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
    .instrument(tracing::info_span!("producer"))
    .await;

    let reply = tokio::time::timeout(Duration::from_secs(10), replied.recv())
        .await
        .expect("the reply is handled in time")
        .expect("a reply");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");

    // Correlation and causation follow the chain without any tracing.
    assert_eq!(reply.name, "PaymentCharged");
    assert_eq!(reply.metadata.correlation_id, Some(order_id));
    assert_ne!(reply.metadata.causation_id, Some(order_id), "caused by the command, not the order");

    let producer = named(&spans, "producer");
    assert_eq!(producer.len(), 1, "{spans:#?}");
    let trace: TraceId = producer[0].span_context.trace_id();
    let in_trace = |s: &&SpanData| s.span_context.trace_id() == trace;

    // Three handle spans, one per subscription, all in the producer's trace.
    let handles = named(&spans, "handle");
    assert_eq!(handles.len(), 3, "{handles:#?}");
    assert!(handles.iter().all(in_trace), "every handle span is in the producer's trace: {handles:#?}");

    // Parent/child links follow the message chain:
    // producer → handle(OrderPlaced) → publish → handle(ChargePayment) → publish → handle(PaymentCharged).
    let attr = |s: &SpanData, key: &str| {
        s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
    };
    let handle_of =
        |name: &str| *handles.iter().find(|s| attr(s, "message.name").as_deref() == Some(name)).expect("a handle span");
    let publish_under = |parent: SpanId| {
        spans
            .iter()
            .filter(in_trace)
            .find(|s| s.name == "publish" && s.parent_span_id == parent)
            .expect("a publish span under the handle span")
    };
    let (order_h, charge_h, reply_h) =
        (handle_of("OrderPlaced"), handle_of("ChargePayment"), handle_of("PaymentCharged"));
    assert_eq!(order_h.parent_span_id, producer[0].span_context.span_id());
    assert!(order_h.parent_span_is_remote, "the parent came through the message");
    let command_publish = publish_under(order_h.span_context.span_id());
    assert_eq!(charge_h.parent_span_id, command_publish.span_context.span_id());
    let reply_publish = publish_under(charge_h.span_context.span_id());
    assert_eq!(reply_h.parent_span_id, reply_publish.span_context.span_id());
    for h in [order_h, charge_h, reply_h] {
        assert_eq!(h.span_kind, opentelemetry::trace::SpanKind::Consumer);
    }

    // The relay publishes batches mixing traces: its spans are roots linked to the messages.
    let relays = named(&spans, "relay");
    assert!(!relays.is_empty());
    assert!(relays.iter().all(|r| r.parent_span_id == SpanId::INVALID));
    let linked = |id: SpanId| relays.iter().any(|r| r.links.links.iter().any(|l| l.span_context.span_id() == id));
    assert!(linked(producer[0].span_context.span_id()), "a relay span links to the producer");
    assert!(linked(command_publish.span_context.span_id()), "a relay span links to the command's publish");
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_built_in_a_span_carries_its_context_and_a_failed_handle_is_an_error() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(herald_otel::layer(&provider)));

    let span = tracing::info_span!("request");
    let message = span.in_scope(|| Message::new("t", "N", b"{}".to_vec()).with_current_trace());
    drop(span);
    let parent =
        herald::observability::TraceParent::parse(message.metadata.traceparent.as_deref().expect("traceparent"))
            .expect("a valid traceparent");

    // A handle span made from it continues the trace, and is marked failed on error.
    let handle = herald::observability::handle_span(&message, "h", 1);
    herald::observability::mark_error(&handle);
    drop(handle);
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let request = named(&spans, "request")[0];
    let handle = named(&spans, "handle")[0];
    assert_eq!(request.span_context.trace_id().to_string(), parent.trace_id_hex());
    assert_eq!(handle.span_context.trace_id(), request.span_context.trace_id());
    assert_eq!(handle.parent_span_id, request.span_context.span_id());
    assert!(matches!(handle.status, opentelemetry::trace::Status::Error { .. }), "{:?}", handle.status);
}

mod counter {
    use herald::aggregate::Aggregate;
    use herald::{Event, event_set};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Incremented;
    impl Event for Incremented {
        const NAME: &'static str = "counter.Incremented.v1";
    }

    event_set! {
        #[derive(Debug, Clone, PartialEq)]
        pub enum CounterEvent { Incremented(Incremented) }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    pub struct Never;

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Counter(u64);

    impl Aggregate for Counter {
        const TYPE: &'static str = "counter";
        type Command = ();
        type Event = CounterEvent;
        type Error = Never;

        fn handle(&self, (): ()) -> Result<Vec<CounterEvent>, Never> {
            Ok(vec![Incremented.into()])
        }

        fn apply(&mut self, _: &CounterEvent) {
            self.0 += 1;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_command_and_its_append_are_spans_and_the_events_carry_the_append_span_context() {
    use herald::aggregate::{Repository, stream_name};

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(herald_otel::layer(&provider)));

    let store = MemoryStore::new();
    Repository::<counter::Counter>::new()
        .execute(&store, "c-1", ())
        .instrument(tracing::info_span!("request"))
        .await
        .expect("execute");
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let (request, command, append) =
        (named(&spans, "request")[0], named(&spans, "command")[0], named(&spans, "append")[0]);
    assert_eq!(command.parent_span_id, request.span_context.span_id());
    assert_eq!(append.parent_span_id, command.span_context.span_id());

    let events = store.read_stream(&stream_name::<counter::Counter>("c-1"), 1, 10).await.expect("read");
    let parent =
        herald::observability::TraceParent::parse(events[0].metadata.traceparent.as_deref().expect("traceparent"))
            .expect("valid");
    assert_eq!(parent.trace_id_hex(), request.span_context.trace_id().to_string());
    assert_eq!(format!("{:016x}", parent.span_id), append.span_context.span_id().to_string());
}

mod trip {
    use herald::codec::Event;
    use serde::{Deserialize, Serialize};

    /// The saga's command to the payments participant.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Charge {
        pub order: String,
    }
    impl Event for Charge {
        const NAME: &'static str = "payments.Charge.v1";
    }

    /// The saga's last command, once the charge succeeded.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Notify {
        pub order: String,
    }
    impl Event for Notify {
        const NAME: &'static str = "notifications.Notify.v1";
    }

    /// The saga data.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Order {
        pub id: String,
    }
}

/// producer → consumer (starts a saga) → saga command → participant → reply → saga (next step)
/// → consumer: one trace, each `handle` span the child of the one whose message caused it.
#[tokio::test(flavor = "current_thread")]
async fn one_trace_spans_producer_consumer_saga_command_reply_and_the_sagas_next_step() {
    use herald::codec::Event;
    use herald::command::Reply;
    use herald::saga::{Orchestrator, Saga, Step};

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(herald_otel::layer(&provider)));

    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryBroker::in_memory());
    let saga = Saga::new("PayOrder", "pay-order.replies")
        .step(Step::new("charge").action(|o: &trip::Order| {
            Ok(Message::encode("payments.commands", &trip::Charge { order: o.id.clone() })?.with_key(o.id.clone()))
        }))
        .step(Step::new("notify").action(|o: &trip::Order| {
            Ok(Message::encode("notifications", &trip::Notify { order: o.id.clone() })?.with_key(o.id.clone()))
        }));
    let orchestrator = Orchestrator::new(saga, store.clone());

    /// Starts the saga for every order, in the handler's unit of work.
    struct StartSaga(Orchestrator<trip::Order>);
    #[async_trait]
    impl Handler for StartSaga {
        async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
            let order = cx.message().clone();
            let data = trip::Order { id: order.key.clone() };
            self.0.start(cx.tx()?, &order.key, data, Some(&order)).await.map_err(HandlerError::permanent)?;
            Ok(())
        }
    }

    let (done, mut notified) = mpsc::channel(1);
    let router = Router::new(broker.clone())
        .store(store.clone())
        .route(Route::new(subscription("orders", "checkout")).on_name("OrderPlaced", StartSaga(orchestrator.clone())))
        .route(Route::new(subscription("payments.commands", "payments")).on_command(
            async |_cx: &mut HandlerContext, _charge: trip::Charge| Ok::<_, HandlerError>(Reply::success()),
        ))
        .route(Route::new(subscription("pay-order.replies", "pay-order")).fallback(orchestrator.reply_handler()))
        .route(Route::new(subscription("notifications", "notifier")).on_name(trip::Notify::NAME, Done(done)));
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(router.run(shutdown.clone()));
    tasks.spawn(OutboxRelay::new(store.clone(), broker.clone()).run(shutdown.clone()));

    let order = Message::new("orders", "OrderPlaced", b"{}".to_vec()).with_key("o-7");
    let order_id = order.id;
    async {
        let mut tx = store.begin().await.expect("begin");
        tx.enqueue(vec![order]).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
    .instrument(tracing::info_span!("producer"))
    .await;

    let notify = tokio::time::timeout(Duration::from_secs(10), notified.recv())
        .await
        .expect("the saga's last command is handled in time")
        .expect("a message");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");

    assert_eq!(notify.metadata.correlation_id, Some(order_id), "one conversation from the order on");
    let producer = named(&spans, "producer")[0];
    let handles = named(&spans, "handle");
    let attr = |s: &SpanData, key: &str| {
        s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
    };
    let handle_of = |name: &str| {
        *handles.iter().find(|s| attr(s, "message.name").as_deref() == Some(name)).unwrap_or_else(|| {
            panic!("a handle span for {name}: {handles:#?}");
        })
    };
    let chain = [
        handle_of("OrderPlaced"),
        handle_of(trip::Charge::NAME),
        handle_of(herald::command::SUCCESS),
        handle_of(trip::Notify::NAME),
    ];
    let trace = producer.span_context.trace_id();
    assert!(chain.iter().all(|s| s.span_context.trace_id() == trace), "one trace: {chain:#?}");
    assert_eq!(chain[0].parent_span_id, producer.span_context.span_id(), "consumer ← producer");
    assert_eq!(chain[1].parent_span_id, chain[0].span_context.span_id(), "saga command ← the handler that started it");
    assert_eq!(chain[2].parent_span_id, chain[1].span_context.span_id(), "reply ← the command's handler");
    assert_eq!(chain[3].parent_span_id, chain[2].span_context.span_id(), "next saga step ← the reply's handler");
}
