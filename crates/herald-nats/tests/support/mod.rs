//! What the failover tests (partitions, processes, cluster) share: waiting for a condition,
//! numbered keyed messages, and — when a wait times out — a report of the group's partition
//! consumers and claims, so a failure says where the messages are.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use herald::Message;
use tokio::time::Instant;

/// Logs to the test's output at the `TEST_LOG` filter (e.g. `herald_nats=debug`), if set.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls `condition` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, what: &str, condition: impl FnMut() -> bool) {
    eventually_explained(within, what, condition, async || String::new()).await;
}

/// [`eventually`], and on a timeout the panic message ends with what `explain` says.
pub async fn eventually_explained(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
    explain: impl AsyncFnOnce() -> String,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}\n{}", explain().await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What is not acked yet, for a failure report: `sent` against the `acked` ids, and per key the
/// sequence numbers first `handled`.
pub fn missing(
    sent: &[herald::message::MessageId],
    acked: &std::collections::HashSet<herald::message::MessageId>,
    handled: &std::collections::HashMap<String, Vec<u64>>,
    by_member: &std::collections::HashMap<&'static str, u64>,
) -> String {
    let not_acked = sent.iter().filter(|id| !acked.contains(id)).count();
    let mut keys: Vec<_> = handled.iter().map(|(k, v)| (k.clone(), v.len(), v.last().copied())).collect();
    keys.sort();
    format!(
        "{not_acked} of {} sent not acked; handled by member {by_member:?}; per key (key, handled, last): {keys:?}",
        sent.len()
    )
}

/// One message per key `key-0` … for round `round`, the round number as payload.
pub fn round(topic: &str, keys: u64, round: u64) -> Vec<Message> {
    (0..keys)
        .map(|k| Message::new(topic, "Numbered.v1", round.to_string().into_bytes()).with_key(format!("key-{k}")))
        .collect()
}

/// Whether the partition consumers of `group` have nothing left: no message pending delivery,
/// none delivered and unacknowledged. The server's word on "every message acked": an ack whose
/// confirmation was lost with a dying server is acked all the same.
pub async fn group_settled(urls: &str, stream: &str, group: &str, partitions: u32) -> bool {
    let Ok(client) = async_nats::connect(urls.split(',').collect::<Vec<_>>()).await else { return false };
    let js = async_nats::jetstream::new(client);
    let Ok(stream) = js.get_stream(stream).await else { return false };
    for p in 0..partitions {
        match stream.consumer_info(format!("{group}-p{p}")).await {
            Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 => {}
            _ => return false,
        }
    }
    true
}

/// The state of partitioned group `group` on stream `stream`: each partition consumer's
/// counters and each claim in the bucket `<stream_prefix>partitions`.
pub async fn group_report(urls: &str, stream_prefix: &str, stream: &str, group: &str, partitions: u32) -> String {
    let client = match async_nats::connect(urls.split(',').collect::<Vec<_>>()).await {
        Ok(client) => client,
        Err(e) => return format!("(no report: {e})"),
    };
    let js = async_nats::jetstream::new(client);
    let mut out = Vec::new();
    match js.get_stream(stream).await {
        Ok(stream) => {
            for p in 0..partitions {
                let name = format!("{group}-p{p}");
                out.push(match stream.consumer_info(&name).await {
                    Ok(i) => format!(
                        "{name}: pending {} ack pending {} redelivered {} waiting pulls {} delivered {}/{} \
                         ack floor {}/{} deliver {:?}",
                        i.num_pending,
                        i.num_ack_pending,
                        i.num_redelivered,
                        i.num_waiting,
                        i.delivered.consumer_sequence,
                        i.delivered.stream_sequence,
                        i.ack_floor.consumer_sequence,
                        i.ack_floor.stream_sequence,
                        i.config.deliver_policy
                    ),
                    Err(e) => format!("{name}: {e}"),
                });
            }
        }
        Err(e) => out.push(format!("stream {stream}: {e}")),
    }
    match js.get_key_value(format!("{stream_prefix}partitions")).await {
        Ok(kv) => {
            if let Ok(mut keys) = kv.keys().await {
                while let Some(Ok(key)) = keys.next().await {
                    let entry = kv.entry(&key).await.ok().flatten();
                    let shown = entry.map(|e| format!("{:?} rev {}", String::from_utf8_lossy(&e.value), e.revision));
                    out.push(format!("claim {key} = {}", shown.unwrap_or_else(|| "(none)".into())));
                }
            }
        }
        Err(e) => out.push(format!("claims bucket: {e}")),
    }
    out.join("\n")
}

/// A TCP proxy in front of a NATS server that can hold what the server sends (bytes on their
/// way to the client) and cut every connection, dropping what it holds: a connection lost with
/// a delivery on its way. Clients reconnect through it.
pub struct Proxy {
    pub url: String,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: &'static str) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("nats://{}", listener.local_addr().expect("address"));
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let held = hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let (mut cut_up, mut cut_down) = (cuts.clone(), cuts.clone());
                cut_up.mark_unchanged();
                cut_down.mark_unchanged();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        tokio::select! {
                            _ = cut_up.changed() => return,
                            n = client_read.read(&mut buf) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) => if server_write.write_all(&buf[..n]).await.is_err() { return },
                            },
                        }
                    }
                });
                let held = held.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut holding = Vec::new();
                    loop {
                        tokio::select! {
                            _ = cut_down.changed() => return, // what is held is lost
                            n = server_read.read(&mut buf) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    holding.extend_from_slice(&buf[..n]);
                                    if !held.load(Ordering::SeqCst) {
                                        if client_write.write_all(&holding).await.is_err() { return }
                                        holding.clear();
                                    }
                                }
                            },
                        }
                    }
                });
            }
        });
        Self { url, hold, cut }
    }

    /// From now on, what the server sends is held back (not forwarded).
    pub fn hold(&self) {
        self.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every connection (what is held is lost) and forwards freely again.
    pub fn cut(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }
}
