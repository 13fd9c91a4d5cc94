//! Fault test: a private RabbitMQ node is stopped and restarted while a publisher publishes
//! continuously (retrying on errors) and a subscription consumes. Nothing whose publish was
//! confirmed may be lost, and the subscription must recover by itself.
//!
//! The node is started here, on ports of its own, with its data in a temp directory, so the
//! shared server on 5672 is never touched. Needs `rabbitmq-server` on the `PATH` (Debian's
//! package, which drops to the `rabbitmq` user when started as root, hence the world-writable
//! temp directory) and a running `epmd` (the shared server's will do). Without them the test
//! prints `SKIPPED` and passes, or fails when `CI` is set.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::message::{Message, MessageId};
use herald::pubsub::{Publisher, SubscribeOptions, Subscriber};
use herald_amqp::AmqpConfig;

/// A RabbitMQ node of this test's own.
struct Node {
    dir: tempfile::TempDir,
    name: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("herald-fault-").tempdir().expect("temp dir");
        // The server runs as the `rabbitmq` user when started as root.
        set_mode(dir.path(), 0o777);
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("plugins file");
        set_mode(&dir.path().join("enabled_plugins"), 0o644);
        let name = format!("herald-fault-{:08x}@localhost", fastrand::u32(..));
        Self { dir, name, port: free_port(), dist_port: free_port(), child: None }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("server.out")).expect("log");
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.path("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", self.path("advanced.config"))
            .env("RABBITMQ_PID_FILE", self.path("pid"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting rabbitmq-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ node did not start; see {:?}",
                self.path("server.out")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the node (SIGTERM to the Erlang VM, a clean shutdown) and waits for it to be gone.
    fn stop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("pid")) {
            let pid = pid.trim().to_owned();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn available() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v rabbitmq-server && command -v epmd"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "rabbitmq-server or epmd is missing and CI is set");
        eprintln!("SKIPPED: rabbitmq-server or epmd is not installed; cannot start a private node");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_loses_no_confirmed_message() {
    const TOTAL: u64 = 3_000;
    if !available() {
        return;
    }
    let mut node = tokio::task::block_in_place(|| {
        let mut node = Node::new();
        node.start();
        node
    });
    let config = AmqpConfig::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port))
        .prefix("fault.")
        .confirm_timeout(Duration::from_secs(5));
    let publisher = config.connect().await.expect("connecting the publisher");
    let subscriber = config.connect().await.expect("connecting the subscriber");
    let options =
        SubscribeOptions::new("fault.orders", "billing").ack_wait(Duration::from_secs(10)).max_deliveries(100);
    let mut sub = subscriber.subscribe(options).await.expect("subscribing");

    let handled: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let deliveries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let consumer = {
        let (handled, deliveries) = (handled.clone(), deliveries.clone());
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                let id = d.message.id;
                deliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A lost connection refuses the ack; the message comes back.
                if d.ack().await.is_ok() {
                    handled.lock().expect("lock").insert(id);
                }
            }
        })
    };

    let confirmed: Arc<Mutex<Vec<MessageId>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (confirmed, errors) = (confirmed.clone(), errors.clone());
        tokio::spawn(async move {
            for i in 0..TOTAL {
                let m = Message::new("fault.orders", "fault.Test.v1", i.to_string().into_bytes());
                // Retry the same message until it is confirmed (the duplicates this makes are
                // the at-least-once kind; the check below is about loss).
                while let Err(e) = publisher.publish(std::slice::from_ref(&m)).await {
                    if errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        eprintln!("publish failed (retrying): {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                confirmed.lock().expect("lock").push(m.id);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            publisher
        })
    };

    // Restart once a good part of the stream is out.
    while confirmed.lock().expect("lock").len() < (TOTAL / 3) as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_restart = confirmed.lock().expect("lock").len();
    let restart_started = Instant::now();
    tokio::task::block_in_place(|| {
        node.stop();
        node.start();
    });
    eprintln!("restarted the node after {at_restart} confirmed messages, in {:?}", restart_started.elapsed());

    let publisher = producer.await.expect("the producer");
    let confirmed: HashSet<MessageId> = confirmed.lock().expect("lock").iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let missing = confirmed.difference(&handled.lock().expect("lock")).count();
        if missing == 0 {
            break;
        }
        assert!(
            !consumer.is_finished(),
            "the subscription ended instead of reconnecting ({missing} confirmed messages not handled)"
        );
        assert!(Instant::now() < deadline, "{missing} confirmed messages were never handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handled_count = handled.lock().expect("lock").len();
    println!(
        "sent {}, handled {handled_count} ({} deliveries, {} publish errors retried)",
        confirmed.len(),
        deliveries.load(std::sync::atomic::Ordering::Relaxed),
        errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    publisher.close().await.expect("closing the publisher");
    subscriber.close().await.expect("closing the subscriber");
    consumer.await.expect("the consumer");
    tokio::task::block_in_place(|| node.stop());
}
