//! Nothing is lost when the NATS server goes away mid-stream (SIGKILL, then SIGTERM) and comes
//! back on the same port and JetStream store directory.
//!
//! The test starts a PRIVATE `nats-server -js` (its own free port and store directory in a
//! temporary directory; the shared server on 4222 is never touched) and runs a producer that
//! publishes a paced stream of messages over many keys, counting a message as sent only when
//! `publish` returned `Ok` and retrying the same message (same id, so JetStream's duplicate
//! window absorbs a publish that did land) on error, and a [`Router`] whose handler records
//! every message it handles. Mid-stream the server is stopped twice: for ~1.5 s, then for 6 s (longer than the
//! client's request timeout). The same broker
//! connection, subscription and router must recover by themselves; every message counted as
//! sent must be handled (at least once: JetStream redelivers what was in flight). Run with
//! `--nocapture` to see the `sent N, handled M, duplicates D, restarts R` line, and
//! `RUST_LOG=warn` for the adapter's warnings.
//!
//! Without `nats-server` (on `PATH`, `/usr/sbin`, or `HERALD_NATS_SERVER`) the test skips
//! loudly, and fails when `CI` is set.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Message, Publisher, SubscribeOptions, Subscriber};
use herald_conformance::faults::{
    GROUP, NAME, PrivateServer, ServerArgs, Stop, TOPIC, find_binary, restart_scenario, run_with_server,
};
use herald_nats::{NatsConfig, Storage};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// A private `nats-server -js` (`HERALD_NATS_SERVER`, else on `PATH` or in `/usr/sbin`) with its
/// JetStream store in the server's temporary directory.
fn nats_server() -> Option<PrivateServer> {
    let args: ServerArgs = Box::new(|port: u16, dir: &Path| {
        let mut args: Vec<OsString> =
            ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"].map(OsString::from).into();
        args.push(dir.join("jetstream").into_os_string());
        args
    });
    PrivateServer::start_new(
        "nats-server",
        find_binary("HERALD_NATS_SERVER", "nats-server", &["/usr/sbin", "/usr/local/bin"]),
        args,
    )
}

fn url(server: &PrivateServer) -> String {
    format!("nats://127.0.0.1:{}", server.port())
}

#[test]
fn nats_server_restarts_mid_stream_lose_nothing() {
    init_tracing();
    let Some(mut server) = nats_server() else { return };
    run_with_server(&mut server, None, |server| {
        Box::pin(async move {
            let broker = NatsConfig::new(url(server))
                .stream_prefix("restart-")
                .storage(Storage::File)
                .connect()
                .await
                .expect("connect to the private NATS server");
            restart_scenario(Arc::new(broker), server).await;
        })
    });
}

/// With memory storage a restart loses the streams and consumers (that is what memory storage
/// means; the messages of the outage are gone). The broker must notice instead of trusting its
/// cache of known streams: publishing fails while the server is away, then re-creates the stream
/// and succeeds, with the same broker object; and the subscription made before the restart
/// re-creates its consumer and receives what is published after it.
async fn lost_stream_scenario(server: &mut PrivateServer) -> u32 {
    let broker = NatsConfig::new(url(server))
        .stream_prefix("restart-memory-")
        .storage(Storage::Memory)
        .connect()
        .await
        .expect("connect to the private NATS server");
    let message = || Message::new(TOPIC, NAME, b"m".to_vec());
    let mut subscription = broker
        .subscribe(SubscribeOptions::new(TOPIC, GROUP).ack_wait(Duration::from_secs(5)))
        .await
        .expect("subscribe");
    broker.publish(&[message()]).await.expect("first publish");
    let first = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await;
    first.expect("the first message within 5 s").expect("a delivery").ack().await.expect("ack");
    tokio::task::block_in_place(|| server.stop(Stop::Kill));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| server.start());
    let mut failures = 0;
    let after = message();
    while let Err(e) = broker.publish(std::slice::from_ref(&after)).await {
        failures += 1;
        assert!(failures < 50, "publishing after the restart still fails: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscription notices only when async-nats gives up re-checking its consumer after the
    // reconnect (~15 s of retries), then re-creates it at the group's start (`Latest`): keep
    // publishing until one arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = loop {
        match tokio::time::timeout(Duration::from_millis(500), subscription.next()).await {
            Ok(Some(d)) => break d,
            Ok(None) => panic!("the subscription ended when the server lost its consumer"),
            Err(_) => {
                assert!(Instant::now() < deadline, "the subscription received nothing after the restart");
                broker.publish(&[message()]).await.expect("publish after the restart");
            }
        }
    };
    received.ack().await.expect("ack after the restart");
    drop(subscription);
    broker.close().await.expect("close");
    failures
}

#[test]
fn a_stream_and_consumer_lost_in_a_restart_are_recreated() {
    init_tracing();
    let Some(mut server) = nats_server() else { return };
    let failures = run_with_server(&mut server, Some(Duration::from_secs(50)), |s| Box::pin(lost_stream_scenario(s)));
    println!("publishing recovered after {failures} failed attempts; the subscription re-created its consumer");
}
