//! The embedded server: `mallbots serve` as a child process on a free port, its database in a
//! temporary directory, watched through `/proc` (CPU time, resident memory) and stopped with
//! SIGTERM at the end. A child process rather than the app in this process, so the figures are
//! the server's alone and the simulator's CPU is not counted as the server's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How to start the embedded server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The `mallbots` executable to run `serve` with.
    pub exe: PathBuf,
    /// `--database`; unset = a SQLite file in the temporary directory.
    pub database: Option<String>,
    /// `--broker`; unset = the SQL broker on the database.
    pub broker: Option<String>,
    /// `--namespace`; unset = `simulate_<unix time>_<pid>` when the database or broker is a
    /// shared server (a fresh schema, fresh streams), the default otherwise.
    pub namespace: Option<String>,
}

impl ServerConfig {
    /// Runs the current executable.
    pub fn current_exe() -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("finding the mallbots executable")?,
            database: None,
            broker: None,
            namespace: None,
        })
    }
}

/// A running `mallbots serve`. Killed (SIGKILL) if dropped without [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Holds the database and the server's log; removed when dropped.
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its gRPC server, `http://127.0.0.1:PORT`.
    pub grpc_url: String,
    /// The admin token given to it.
    pub admin_token: String,
    /// What the report shows as the database.
    pub database: String,
    /// The namespace, when one was chosen for a shared server.
    pub namespace: Option<String>,
}

impl Server {
    /// Starts the server and waits (up to a minute) for its `MallBots on http://…` line.
    pub async fn start(config: &ServerConfig) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("mallbots-simulate-").tempdir().context("creating a temp dir")?;
        let log_path = dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path).context("creating the server log")?;
        let admin_token = format!("simulate-{}", uuid::Uuid::new_v4().simple());
        let database =
            config.database.clone().unwrap_or_else(|| format!("sqlite://{}", dir.path().join("mallbots.db").display()));
        let shared = !database.starts_with("sqlite:") || config.broker.is_some();
        let namespace = config.namespace.clone().or_else(|| {
            shared.then(|| {
                let unix =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                format!("simulate_{unix}_{}", std::process::id())
            })
        });
        let mut command = Command::new(&config.exe);
        command
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
                "--database",
                &database,
                "--admin-token",
                &admin_token,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the server log")?)
            .stderr(log);
        if let Some(broker) = &config.broker {
            command.args(["--broker", broker]);
        }
        if let Some(namespace) = &namespace {
            command.args(["--namespace", namespace]);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let child = command.spawn().with_context(|| format!("starting {} serve", config.exe.display()))?;
        let mut server =
            Self { child, dir, url: String::new(), grpc_url: String::new(), admin_token, database, namespace };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some((http, grpc)) = text.lines().find_map(crate::grpc::listening) {
                server.url = format!("http://{http}");
                server.grpc_url = grpc.map(|g| format!("http://{g}")).unwrap_or_default();
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait().context("watching the server")? {
                anyhow::bail!("mallbots serve exited ({status}) before listening:\n{}", tail(&text, 20));
            }
            if Instant::now() > deadline {
                anyhow::bail!("mallbots serve did not listen within a minute:\n{}", tail(&text, 20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default(), lines)
    }

    /// Stops the server: SIGTERM, up to 15 s to shut down cleanly, then SIGKILL. The temporary
    /// directory goes when `self` is dropped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let term = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        if term.is_ok_and(|s| s.success()) {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if self.child.try_wait()?.is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.child.kill().context("SIGKILL mallbots serve")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A process's CPU time (user + system, all threads) and resident memory, from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU seconds used since it started.
    pub cpu_seconds: f64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// The highest resident set size so far (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

/// The usage of process `pid` (`None` off Linux or once it has gone).
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at the state, field 3; utime and
    // stime are fields 14 and 15, in clock ticks of USER_HZ, 100 on every Linux architecture.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Usage { cpu_seconds: ticks as f64 / 100.0, rss_kib: kib("VmRSS:")?, peak_rss_kib: kib("VmHWM:")? })
}
