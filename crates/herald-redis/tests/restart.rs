//! Nothing is lost when the Redis server goes away mid-stream (SIGKILL, then SIGTERM) and comes
//! back on the same port and data directory.
//!
//! The test starts a PRIVATE `redis-server` with persistence on (`--appendonly yes
//! --appendfsync always`, so what was acknowledged survives the restart) on its own free port in
//! a temporary directory (the shared server on 6379 is never touched), and runs a producer that
//! publishes a paced stream of messages over many keys, counting a message as sent only when
//! `publish` returned `Ok` and retrying the same message (same id) on error (Redis Streams do
//! not de-duplicate, so a publish that landed before its error was seen is stored twice and
//! shows up as a duplicate delivery: at least once), and a [`Router`] whose handler records
//! every message it handles. Mid-stream the server is stopped twice: for ~1.5 s, then for 6 s
//! (longer than the client's 5 s response timeout). The same broker, subscription and router
//! must recover by themselves; every message counted as sent must be handled (at least once:
//! what was in flight is claimed again after its ack wait). Run with
//! `--nocapture` to see the `sent N, handled M, duplicates D, restarts R` line, and
//! `RUST_LOG=warn` for the adapter's warnings.
//!
//! Without `redis-server` (on `PATH`, `/usr/bin`, or `HERALD_REDIS_SERVER`) the test skips
//! loudly, and fails when `CI` is set.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Message, Publisher, SubscribeOptions, Subscriber};
use herald_conformance::faults::{
    GROUP, NAME, PrivateServer, ServerArgs, Stop, TOPIC, find_binary, restart_scenario, run_with_server,
};
use herald_redis::RedisConfig;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// A private `redis-server` (`HERALD_REDIS_SERVER`, else on `PATH` or in `/usr/bin`) with its data
/// in the server's temporary directory; `persistent`: an append-only file with `fsync` on every
/// write, otherwise nothing survives a restart.
fn redis_server(persistent: bool) -> Option<PrivateServer> {
    let args: ServerArgs = Box::new(move |port: u16, dir: &Path| {
        let mut args: Vec<OsString> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"].map(OsString::from).into();
        args.push(dir.as_os_str().to_owned());
        let aof = if persistent { "yes" } else { "no" };
        args.extend(["--appendonly", aof, "--appendfsync", "always", "--save", ""].map(OsString::from));
        args
    });
    PrivateServer::start_new(
        "redis-server",
        find_binary("HERALD_REDIS_SERVER", "redis-server", &["/usr/bin", "/usr/local/bin"]),
        args,
    )
}

fn url(server: &PrivateServer) -> String {
    format!("redis://127.0.0.1:{}", server.port())
}

#[test]
fn redis_server_restarts_mid_stream_lose_nothing() {
    init_tracing();
    let Some(mut server) = redis_server(true) else { return };
    run_with_server(&mut server, None, |server| {
        Box::pin(async move {
            let broker = RedisConfig::new(url(server))
                .key_prefix("restart:")
                .connect()
                .await
                .expect("connect to the private Redis server");
            restart_scenario(Arc::new(broker), server).await;
        })
    });
}

/// Without persistence a restart loses the streams and the consumer groups (the messages of the
/// outage are gone: that is what no persistence means). The subscription made before the
/// restart must notice its group is gone, re-create it, and receive what is published after
/// the restart, with the same broker and subscription objects.
async fn lost_group_scenario(server: &mut PrivateServer) -> u32 {
    let broker = RedisConfig::new(url(server))
        .key_prefix("restart-volatile:")
        .connect()
        .await
        .expect("connect to the private Redis server");
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
    // The group is re-created at the subscription's start (`Latest`), possibly after a publish:
    // keep publishing until one arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    let received = loop {
        match tokio::time::timeout(Duration::from_millis(500), subscription.next()).await {
            Ok(Some(d)) => break d,
            Ok(None) => panic!("the subscription ended when the server lost its group"),
            Err(_) => {
                assert!(Instant::now() < deadline, "the subscription received nothing after the restart");
                if broker.publish(&[message()]).await.is_err() {
                    failures += 1;
                }
            }
        }
    };
    received.ack().await.expect("ack after the restart");
    drop(subscription);
    broker.close().await.expect("close");
    failures
}

#[test]
fn a_group_lost_in_a_restart_is_recreated() {
    init_tracing();
    let Some(mut server) = redis_server(false) else { return };
    let failures = run_with_server(&mut server, Some(Duration::from_secs(40)), |s| Box::pin(lost_group_scenario(s)));
    println!("the subscription re-created its group; {failures} failed publishes");
}
