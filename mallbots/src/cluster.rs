//! MallBots as services on one machine: one `mallbots serve --modules <module>` process per
//! module (or several: replicas), each in its own PostgreSQL schema, all on one broker, behind
//! an nginx gateway. `mallbots cluster` runs one in the foreground; the tests use it to drive
//! real processes (and kill them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::gateway::{Upstream, nginx_config};
use crate::module::{self, Module};

/// How a cluster runs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `mallbots` binary.
    pub exe: PathBuf,
    /// PostgreSQL (`postgres://…`): each module in the schema `<namespace>_<module>`.
    pub database: String,
    /// The broker (`nats://…`, …); `None` = the SQL broker in the schema `<namespace>`.
    pub broker: Option<String>,
    pub namespace: String,
    pub admin_token: String,
    /// The broker's state is throw-away (tests): see [`Config::ephemeral_broker`](crate::app::Config).
    pub ephemeral_broker: bool,
    /// Where the gateway listens (`host:port`; port 0 = a free one).
    pub gateway: String,
    /// Where the gateway listens for gRPC (`host:port`; port 0 = a free one).
    pub grpc_gateway: String,
    /// Module `i` of [`MODULES`](module::MODULES) listens on `first_module_port + i` (its
    /// replicas on the next free ports); `None` = free ports.
    pub first_module_port: Option<u16>,
    /// Processes per module (default 1); a module missing here runs once.
    pub replicas: BTreeMap<String, usize>,
    /// Only these modules (empty: all of them).
    pub only: Vec<String>,
    /// More arguments for every `mallbots serve` process.
    pub extra_args: Vec<String>,
    /// Logs, the nginx configuration and its runtime files.
    pub dir: PathBuf,
    /// The `nginx` binary.
    pub nginx: PathBuf,
}

impl ClusterConfig {
    /// A cluster of every module on `database` and `broker`, in `dir`, on free ports.
    pub fn new(exe: impl Into<PathBuf>, database: &str, broker: Option<&str>, dir: &Path) -> Self {
        Self {
            exe: exe.into(),
            database: database.to_owned(),
            broker: broker.map(str::to_owned),
            namespace: crate::app::DEFAULT_NAMESPACE.to_owned(),
            admin_token: String::new(),
            ephemeral_broker: false,
            gateway: "127.0.0.1:0".to_owned(),
            grpc_gateway: "127.0.0.1:0".to_owned(),
            first_module_port: None,
            replicas: BTreeMap::new(),
            only: Vec::new(),
            extra_args: Vec::new(),
            dir: dir.to_owned(),
            nginx: PathBuf::from("nginx"),
        }
    }
}

/// One `mallbots serve` process of a module.
#[derive(Debug)]
pub struct Process {
    pub module: &'static Module,
    pub replica: usize,
    /// `host:port` of its HTTP server (kept across restarts, so the gateway's list holds).
    pub addr: String,
    /// `host:port` of its gRPC server (kept across restarts too).
    pub grpc_addr: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    processes: Vec<Process>,
    nginx: Child,
    gateway: String,
    grpc_gateway: String,
}

impl Cluster {
    /// Starts every module's processes (each waits until it listens), then the gateway.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.dir).with_context(|| format!("creating {}", config.dir.display()))?;
        let mut processes = Vec::new();
        let mut next_port = config.first_module_port;
        for module in module::MODULES {
            let wanted = config.only.is_empty() || config.only.iter().any(|m| m == module.name);
            let replicas = if wanted { config.replicas.get(module.name).copied().unwrap_or(1) } else { 0 };
            for replica in 0..replicas {
                let port = next_port.map_or(0, |p| p + u16::try_from(replica).unwrap_or(0));
                let grpc_port = if port == 0 { 0 } else { port + crate::gateway::GRPC_PORT_OFFSET };
                let log = config.dir.join(format!("{}-{replica}.log", module.name));
                let (addr, grpc_addr) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{grpc_port}"));
                processes.push(Process { module, replica, addr, grpc_addr, log, child: None });
            }
            next_port = next_port.map(|p| p + u16::try_from(replicas.max(1)).unwrap_or(1));
        }
        // Modules start one after the other: each migrates its schema; at once they would
        // only contend.
        for process in &mut processes {
            start_process(&config, process).await?;
        }
        let (gateway, grpc_gateway) = (free_address(&config.gateway)?, free_address(&config.grpc_gateway)?);
        let of = |m: &'static Module| processes.iter().filter(move |p| p.module.name == m.name);
        let upstreams: Vec<Upstream> = module::MODULES
            .iter()
            .map(|m| Upstream {
                module: m,
                servers: of(m).map(|p| p.addr.clone()).collect(),
                grpc_servers: of(m).map(|p| p.grpc_addr.clone()).collect(),
            })
            .collect();
        let conf = config.dir.join("nginx.conf");
        std::fs::write(&conf, nginx_config(&gateway, &grpc_gateway, &upstreams, Some(&config.dir)))
            .with_context(|| format!("writing {}", conf.display()))?;
        let nginx = Command::new(&config.nginx)
            .arg("-p")
            .arg(&config.dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(config.dir.join("nginx.out"))?))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (install Debian's nginx package)", config.nginx.display()))?;
        let mut cluster = Self { config, processes, nginx, gateway, grpc_gateway };
        cluster.wait_for_gateway().await?;
        Ok(cluster)
    }

    async fn wait_for_gateway(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(&self.gateway).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.nginx.try_wait()? {
                let out = std::fs::read_to_string(self.config.dir.join("nginx.out")).unwrap_or_default();
                bail!("nginx exited ({status}):\n{out}");
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {} within 10 s", self.gateway);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway's URL (`http://host:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// The gateway's gRPC address (`host:port`).
    pub fn grpc_addr(&self) -> &str {
        &self.grpc_gateway
    }

    /// The processes.
    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    fn process(&mut self, module: &str, replica: usize) -> anyhow::Result<&mut Process> {
        self.processes
            .iter_mut()
            .find(|p| p.module.name == module && p.replica == replica)
            .with_context(|| format!("no process {module} #{replica}"))
    }

    /// Kills a process at once (SIGKILL: no clean shutdown) and waits until it is gone.
    pub async fn kill(&mut self, module: &str, replica: usize) -> anyhow::Result<()> {
        let process = self.process(module, replica)?;
        if let Some(mut child) = process.child.take() {
            child.kill().await.with_context(|| format!("killing {module} #{replica}"))?;
        }
        Ok(())
    }

    /// Starts a stopped or killed process again, on its address.
    pub async fn restart(&mut self, module: &str, replica: usize) -> anyhow::Result<()> {
        let config = self.config.clone();
        let process = self.process(module, replica)?;
        if process.child.is_none() {
            start_process(&config, process).await?;
        }
        Ok(())
    }

    /// Stops every process cleanly (SIGTERM, then waits), then the gateway. Fails naming the
    /// processes that did not exit with success.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for process in &mut self.processes {
            if let Some(child) = process.child.take() {
                match terminate(child, Duration::from_secs(30)).await {
                    Ok(status) if status.success() => {}
                    Ok(status) => failed.push(format!(
                        "{} #{} exited with {status}:\n{}",
                        process.module.name,
                        process.replica,
                        tail(&process.log, 15)
                    )),
                    Err(e) => failed.push(format!("{} #{}: {e:#}", process.module.name, process.replica)),
                }
            }
        }
        let _ = terminate(self.nginx, Duration::from_secs(5)).await;
        if !failed.is_empty() {
            bail!("stopping the cluster: {}", failed.join("\n"));
        }
        Ok(())
    }
}

async fn start_process(config: &ClusterConfig, process: &mut Process) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&process.log)
        .with_context(|| format!("opening {}", process.log.display()))?;
    let seen = std::fs::metadata(&process.log).map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(&config.exe);
    command
        .args(["serve", "--modules", process.module.name, "--http-addr", &process.addr])
        .args(["--grpc-addr", &process.grpc_addr])
        .args(["--database", &config.database, "--namespace", &config.namespace])
        .args(["--admin-token", &config.admin_token]);
    if let Some(broker) = &config.broker {
        command.args(["--broker", broker]);
    }
    if config.ephemeral_broker {
        command.arg("--ephemeral-broker");
    }
    command.args(&config.extra_args);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let mut child = command
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} serve", config.exe.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&process.log).unwrap_or_default();
        let new = text.get(usize::try_from(seen).unwrap_or(0)..).unwrap_or_default();
        if let Some((http, grpc)) = new.lines().find_map(crate::grpc::listening) {
            process.addr = http;
            if let Some(grpc) = grpc {
                process.grpc_addr = grpc;
            }
            process.child = Some(child);
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} #{} exited ({status}) before listening:\n{}",
                process.module.name,
                process.replica,
                last(new, 20)
            );
        }
        if Instant::now() > deadline {
            bail!("{} #{} did not listen within a minute:\n{}", process.module.name, process.replica, last(new, 20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then waits up to `grace` (SIGKILL after it).
async fn terminate(mut child: Child, grace: Duration) -> anyhow::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        // No `unsafe` for libc::kill: the `kill` command sends the signal.
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.kill().await?;
            bail!("did not stop within {grace:?} of SIGTERM (killed)")
        }
    }
}

/// `addr`, with port 0 replaced by a free port (nginx cannot pick one itself).
fn free_address(addr: &str) -> anyhow::Result<String> {
    match addr.rsplit_once(':') {
        Some((host, "0")) => {
            let listener = std::net::TcpListener::bind(format!("{host}:0"))?;
            Ok(listener.local_addr()?.to_string())
        }
        _ => Ok(addr.to_owned()),
    }
}

fn tail(log: &Path, lines: usize) -> String {
    last(&std::fs::read_to_string(log).unwrap_or_default(), lines)
}

fn last(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
