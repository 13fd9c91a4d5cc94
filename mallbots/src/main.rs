//! The `mallbots` binary: `mallbots serve` runs every module in one process; `mallbots
//! simulate` loads a server with kiosks and admins and reports what it measured.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_otel::{LogFormat, TelemetryConfig};
use mallbots::app::{App, Config, TokenSource};
use mallbots::settings::Settings;
use tokio_util::sync::CancellationToken;

/// MallBots: Herald's reference application — a mall with kiosks, stores and shopper bots,
/// every module talking through events.
#[derive(Debug, Parser)]
#[command(name = "mallbots", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs MallBots' modules (all by default, or those of --modules) in this process: their
    /// REST API (Swagger UI at /docs), message routes, tasks and outbox relays. By default on
    /// one SQLite file with the SQL broker (no server needed); PostgreSQL and NATS, Redis or
    /// RabbitMQ on request. Settings: flags, MALLBOTS_* variables, a TOML file (--config).
    /// Ctrl-C stops it cleanly.
    Serve(ServeArgs),
    /// The load generator: N concurrent kiosks place orders (register, authorize the payment,
    /// start a basket, add items, check out) and wait for the saga's decision; admin workers
    /// complete the shopping lists and pay the invoices so orders reach `completed`. Shows a
    /// live progress bar; at the end prints a report (orders/s, checkout → approved and →
    /// completed percentiles, errors, orders by final status, the server's CPU and memory) and
    /// writes it as JSON and as an HTML page with charts over time. By default it starts a
    /// server of its own in a temporary directory.
    Simulate(SimulateArgs),
    /// Runs MallBots as services on this machine until Ctrl-C: one `mallbots serve --modules
    /// <module>` process per module (each in its own PostgreSQL schema), all on one broker,
    /// behind an nginx gateway (Debian's `nginx` package). Logs and the gateway's
    /// configuration go to --dir. `scripts/cluster.sh up|down` runs it in the background.
    Cluster(ClusterArgs),
    /// Dead letters of a running MallBots (over its admin API): list, show, replay to the group
    /// that failed them, or discard.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Projections of a running MallBots (over its admin API): where they stand, rebuild one.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Shopper bots: N real clients of the depot's gRPC stream. Each takes the shopping lists
    /// it is given (oldest first), picks every stop and completes the list, so orders become
    /// ready with no one at the depot. Runs until Ctrl-C, reporting what the bots did.
    Bot(BotArgs),
    /// Prints the nginx configuration of the gateway for the local cluster's ports (each
    /// module's REST paths to its process); `deploy/nginx.conf` is its output.
    GatewayConfig(GatewayArgs),
}

/// Which server, and the admin token.
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// The server: the gateway, or a process running the module concerned.
    #[arg(long, env = "MALLBOTS_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// The admin bearer token.
    #[arg(long, env = "MALLBOTS_ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<mallbots::ops_cli::Target> {
        let admin_token =
            self.admin_token.clone().context("the admin token is needed: --admin-token or MALLBOTS_ADMIN_TOKEN")?;
        Ok(mallbots::ops_cli::Target { url: self.url.clone(), admin_token })
    }
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Lists dead letters, oldest first.
    List {
        /// pending, replayed, discarded or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Only those of this consumer group.
        #[arg(long)]
        group: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Shows one dead letter in full (its reason, attempts and message).
    Show {
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Replays a pending dead letter to the group that failed it (only that group sees it).
    Replay {
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Discards a pending dead letter (kept, marked discarded).
    Discard {
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Where each projection stands: position, head of its log, lag, phase.
    Status {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Rebuilds a projection from the start of its log, while the server runs.
    Rebuild {
        /// The projection (its module): analytics.
        #[arg(default_value = "analytics")]
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Debug, clap::Args)]
struct BotArgs {
    /// How many bots.
    #[arg(long, default_value_t = 4)]
    count: usize,
    /// The depot's gRPC address: a process running depot, or the gateway.
    #[arg(long, env = "MALLBOTS_GRPC_URL", default_value = "http://127.0.0.1:9000")]
    url: String,
    /// The admin token (bots authenticate with it).
    #[arg(long, env = "MALLBOTS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// How long a bot takes at each stop: milliseconds.
    #[arg(long, default_value_t = 200)]
    pick_ms: u64,
    /// The bots' ids are `<prefix>-1` … `<prefix>-N`.
    #[arg(long, default_value = "bot")]
    prefix: String,
}

#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Where the gateway listens for gRPC (HTTP/2).
    #[arg(long, default_value = "127.0.0.1:9000")]
    grpc_listen: String,
    /// Module number i (in `mallbots serve --help`'s order) listens on this port + i, and for
    /// gRPC 1000 above.
    #[arg(long, default_value_t = 8101)]
    first_module_port: u16,
    /// Containers instead: module `m` is the host `m` (its service name), ports 8080 and 9000.
    #[arg(long)]
    service_hosts: bool,
}

#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// PostgreSQL: every module keeps its tables in the schema `<namespace>_<module>`.
    #[arg(
        long,
        env = "MALLBOTS_DATABASE",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database: String,
    /// The broker every module talks through.
    #[arg(long, env = "MALLBOTS_BROKER", hide_env_values = true, default_value = "nats://127.0.0.1:4222")]
    broker: String,
    #[arg(long, env = "MALLBOTS_NAMESPACE", default_value = "mallbots")]
    namespace: String,
    /// Bearer token of the admin endpoints (every process shares it).
    #[arg(long, env = "MALLBOTS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: String,
    /// Where the gateway listens for gRPC.
    #[arg(long, default_value = "127.0.0.1:9000")]
    grpc_gateway: String,
    /// Module number i listens on this port + i (its replicas on the next ports).
    #[arg(long, default_value_t = 8101)]
    first_module_port: u16,
    /// Processes of a module, e.g. `--replicas notifications=2` (repeatable; default 1 each).
    #[arg(long, value_parser = parse_replicas)]
    replicas: Vec<(String, usize)>,
    /// Logs, the gateway's configuration and its runtime files.
    #[arg(long, default_value = ".cluster")]
    dir: PathBuf,
}

fn parse_replicas(text: &str) -> Result<(String, usize), String> {
    let (module, n) = text.split_once('=').ok_or_else(|| format!("{text:?}: use MODULE=N"))?;
    mallbots::module::find(module.trim()).ok_or_else(|| format!("unknown module {module:?}"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("{text:?}: N must be a number"))?;
    if !(1..=16).contains(&n) {
        return Err(format!("{text:?}: between 1 and 16 processes"));
    }
    Ok((module.trim().to_owned(), n))
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Kiosks placing orders concurrently, each one order at a time.
    #[arg(long, default_value_t = 16)]
    kiosks: usize,
    /// Admin workers completing shopping lists and paying invoices (each drives many orders at
    /// once; the kiosks hand their approved orders to them in turn).
    #[arg(long, default_value_t = 2)]
    admins: usize,
    /// How long new orders are placed: seconds, or with a unit (`90s`, `5m`, `500ms`).
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    duration: Duration,
    /// Then, how long orders in flight may take to reach a final status (the run ends sooner
    /// when none is left).
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    drain: Duration,
    /// A running server to load (`http://HOST:PORT`; needs --admin-token). Unset = start an
    /// embedded `mallbots serve` in a temporary directory, measured and stopped at the end.
    #[arg(long)]
    target: Option<String>,
    /// The --target server's gRPC address (`http://HOST:PORT`), for the bots.
    #[arg(long, requires = "target")]
    grpc_target: Option<String>,
    /// Shopper bots on the depot's gRPC stream: they take the shopping lists, pick every stop
    /// and complete them (0: the admins complete the lists over REST instead).
    #[arg(long, default_value_t = 0)]
    bots: usize,
    /// The admin token of the --target server.
    #[arg(long, env = "MALLBOTS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The embedded server's database (`postgres://USER@HOST:PORT/DB`); unset = a SQLite file
    /// in the temporary directory. Not with --target.
    #[arg(long, conflicts_with = "target")]
    database: Option<String>,
    /// The embedded server's broker (`nats://…`, `redis://…`, `amqp://…`, `kafka://…`); unset = the SQL
    /// broker on the database. Not with --target.
    #[arg(long, conflicts_with = "target")]
    broker: Option<String>,
    /// The embedded server's namespace; unset = `simulate_<unix time>_<pid>` on PostgreSQL or
    /// a real broker (a fresh schema and fresh streams, left in place afterwards).
    #[arg(long, conflicts_with = "target")]
    namespace: Option<String>,
    /// The timeout of every request: seconds, or with a unit.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Where to write the report as JSON; an HTML page with charts goes beside it, with the
    /// extension `.html`.
    #[arg(long, default_value = "simulate-report.json")]
    report: PathBuf,
    /// No progress bar or progress lines.
    #[arg(long)]
    quiet: bool,
}

/// `30` (seconds), `30s`, `5m`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    mallbots::settings::parse_duration(text)
}

/// A duration flag of `serve`, checked here and passed on as written (the settings read it).
fn duration_flag(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.trim().to_owned())
}

/// `mallbots serve`'s flags. Each is optional: unset, the config file's value (or the
/// default) holds; see `deploy/mallbots.toml`.
#[derive(Debug, clap::Args, serde::Serialize)]
struct ServeArgs {
    /// A TOML file of settings (default: `mallbots.toml` in the working directory, if there).
    /// Environment variables override it, flags override both.
    #[arg(long, env = "MALLBOTS_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the settings this process would run with (passwords hidden) and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Address of the HTTP server [default: 127.0.0.1:8080].
    #[arg(long, env = "MALLBOTS_HTTP_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_addr: Option<String>,
    /// Address of the gRPC server: every module's service, with reflection [default:
    /// 127.0.0.1:9000].
    #[arg(long, env = "MALLBOTS_GRPC_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<String>,
    /// The database: `sqlite://FILE` (created if missing) or `postgres://USER@HOST:PORT/DB`
    /// (tables in the schemas `<namespace>_<module>`, created if missing) [default:
    /// sqlite://mallbots.db].
    #[arg(long, env = "MALLBOTS_DATABASE", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    /// The broker: unset = the SQL broker on the same database; or `nats://HOST:PORT`
    /// (JetStream), `redis://HOST:PORT` (Streams), `amqp://USER:PASS@HOST:PORT` (RabbitMQ),
    /// `kafka://HOST:PORT` (Kafka).
    #[arg(long, env = "MALLBOTS_BROKER", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<String>,
    /// Keeps this MallBots apart from others on the same servers: the PostgreSQL schemas and
    /// the prefix of broker streams, keys and queues [default: mallbots].
    #[arg(long, env = "MALLBOTS_NAMESPACE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    /// Bearer token of the admin endpoints; unset = generated at first start, printed once
    /// and kept in `mallbots-admin-token` next to the database.
    #[arg(long, env = "MALLBOTS_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    /// The modules this process runs, comma-separated [default: all]. On PostgreSQL each
    /// keeps its tables in the schema `<namespace>_<module>`; several processes of one module
    /// share its work. Modules: stores, customers, baskets, ordering, payments, depot, cosec,
    /// notifications, search, analytics, admin.
    #[arg(long, env = "MALLBOTS_MODULES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    modules: Option<Vec<String>>,
    /// How long a basket stays open: one neither checked out nor canceled by then is canceled.
    /// Seconds, or with a unit (`90s`, `30m`, `2h`) [default: 30m].
    #[arg(long, env = "MALLBOTS_BASKET_TTL", value_parser = duration_flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    basket_ttl: Option<String>,
    /// Connections of each module's PostgreSQL pool [default: 8 in a process running one
    /// module, 4 per module in one running several].
    #[arg(long, env = "MALLBOTS_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_size: Option<u32>,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    /// Throw-away broker state (tests): NATS streams in memory for 10 minutes, RabbitMQ queues
    /// deleted when unused.
    #[arg(long, hide = true)]
    #[serde(skip)]
    ephemeral_broker: bool,
    /// The SMS gateway takes this many milliseconds per message, one at a time (a slow
    /// provider, to show scale-out).
    #[arg(long, hide = true, default_value_t = 0)]
    #[serde(skip)]
    sms_latency_ms: u64,
}

#[derive(Debug, clap::Args, serde::Serialize)]
struct TelemetryArgs {
    /// Which logs and spans to keep, e.g. `info,herald=debug` [default: info,sqlx=warn].
    #[arg(long = "log-filter", env = "RUST_LOG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    /// `pretty` or `json` (one JSON object per line) [default: pretty].
    #[arg(long, env = "LOG_FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    /// Export Herald's spans over OTLP/gRPC to this endpoint (one trace follows an order
    /// across processes).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if let Command::Serve(args) = command {
        return serve(args).await;
    }
    let mut telemetry = TelemetryConfig::from_env("mallbots");
    if std::env::var_os("RUST_LOG").is_none() {
        telemetry.filter = "info,sqlx=warn".into();
    }
    let _telemetry = herald_otel::install(telemetry).context("installing logs and traces")?;
    match command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Simulate(args) => simulate(args).await,
        Command::Cluster(args) => cluster(args).await,
        Command::DeadLetters(command) => {
            use mallbots::ops_cli::DeadLetters;
            let (command, target) = match command {
                DeadLettersCommand::List { status, group, limit, target } => {
                    (DeadLetters::List { status, group, limit }, target)
                }
                DeadLettersCommand::Show { id, target } => (DeadLetters::Show { id }, target),
                DeadLettersCommand::Replay { id, target } => (DeadLetters::Replay { id }, target),
                DeadLettersCommand::Discard { id, target } => (DeadLetters::Discard { id }, target),
            };
            println!("{}", mallbots::ops_cli::dead_letters(&target.target()?, command, target.json).await?);
            Ok(())
        }
        Command::Projections(command) => {
            use mallbots::ops_cli::Projections;
            let (command, target) = match command {
                ProjectionsCommand::Status { target } => (Projections::Status, target),
                ProjectionsCommand::Rebuild { name, target } => (Projections::Rebuild { name }, target),
            };
            println!("{}", mallbots::ops_cli::projections(&target.target()?, command, target.json).await?);
            Ok(())
        }
        Command::Bot(args) => bots(args).await,
        Command::GatewayConfig(args) => {
            let upstreams = if args.service_hosts {
                mallbots::gateway::service_upstreams(8080, 9000)
            } else {
                mallbots::gateway::local_upstreams(args.first_module_port)
            };
            print!("{}", mallbots::gateway::nginx_config(&args.listen, &args.grpc_listen, &upstreams, None));
            Ok(())
        }
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use mallbots::simulate::{self, Progress, Target, server::ServerConfig};
    let target = match args.target {
        Some(url) => Target::Url {
            url,
            admin_token: args.admin_token.context("--target needs the server's admin token (--admin-token)")?,
            grpc_url: args.grpc_target,
        },
        None => Target::Embedded(ServerConfig {
            database: args.database,
            broker: args.broker,
            namespace: args.namespace,
            ..ServerConfig::current_exe()?
        }),
    };
    let config = simulate::Config {
        kiosks: args.kiosks,
        admins: args.admins,
        bots: args.bots,
        bot_pick: Duration::from_millis(20),
        duration: args.duration,
        drain: args.drain,
        target,
        request_timeout: args.request_timeout,
        progress: if args.quiet { Progress::Quiet } else { Progress::Show },
    };
    // The first Ctrl-C ends the load phase early (the report still comes); a second one quits.
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("Stopping: no new orders; draining (Ctrl-C again to quit at once)…");
                stop.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        }
    });
    let report = simulate::run(config, stop).await?;
    println!("{report}");
    if let Some(namespace) = &report.namespace {
        println!("The server's data is left in namespace {namespace} (a PostgreSQL schema, broker streams).");
    }
    let html = report.write(&args.report)?;
    println!("Report written to {} (charts: {})", args.report.display(), html.display());
    Ok(())
}

async fn bots(args: BotArgs) -> anyhow::Result<()> {
    use mallbots::bot::{BotConfig, BotStats};
    use std::sync::atomic::Ordering;
    anyhow::ensure!((1..=1000).contains(&args.count), "--count must be between 1 and 1000");
    let stats = std::sync::Arc::new(BotStats::default());
    let stop = CancellationToken::new();
    let mut bots = tokio::task::JoinSet::new();
    for n in 1..=args.count {
        let config = BotConfig {
            id: format!("{}-{n}", args.prefix),
            url: args.url.clone(),
            token: args.admin_token.clone(),
            pick: Duration::from_millis(args.pick_ms),
        };
        bots.spawn(mallbots::bot::run(config, stats.clone(), stop.clone()));
    }
    println!("{} shopper bots on {} (Ctrl-C stops them)", args.count, args.url);
    tokio::spawn(stop_on_signal(stop.clone()));
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => println!(
                "lists completed {}, stops picked {}, connections {}",
                stats.lists_completed.load(Ordering::Relaxed),
                stats.stops_picked.load(Ordering::Relaxed),
                stats.connections.load(Ordering::Relaxed)
            ),
        }
    }
    while bots.join_next().await.is_some() {}
    println!("Stopped: {} lists completed.", stats.lists_completed.load(Ordering::Relaxed));
    Ok(())
}

async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    use mallbots::cluster::{Cluster, ClusterConfig};
    let dir = std::path::absolute(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    let config = ClusterConfig {
        namespace: args.namespace,
        admin_token: args.admin_token,
        gateway: args.gateway,
        grpc_gateway: args.grpc_gateway,
        first_module_port: Some(args.first_module_port),
        replicas: args.replicas.into_iter().collect(),
        ..ClusterConfig::new(std::env::current_exe()?, &args.database, Some(&args.broker), &dir)
    };
    println!("Starting MallBots as services (logs in {})…", dir.display());
    let cluster = Cluster::start(config).await?;
    for p in cluster.processes() {
        println!("  {:<14} #{}  http://{}  (pid {})", p.module.name, p.replica, p.addr, p.pid().unwrap_or(0));
    }
    println!("MallBots cluster on {} (the gateway; gRPC on {}). Ctrl-C stops it.", cluster.url(), cluster.grpc_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    shutdown.cancelled().await;
    cluster.stop().await?;
    println!("Stopped.");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (settings, file) = Settings::load(args.config.as_deref(), &args)?;
    if args.print_config {
        match &file {
            Some(file) => println!("# from {}, the environment and flags", file.display()),
            None => println!("# no config file: defaults, the environment and flags"),
        }
        print!("{}", settings.to_toml());
        return Ok(());
    }
    // Checked before anything starts: an unknown module name fails at once.
    let modules = mallbots::module::select(&settings.modules)?;
    let _telemetry = herald_otel::install(TelemetryConfig {
        service_name: mallbots::module::service_name(&modules),
        filter: settings.telemetry.filter.clone(),
        log_format: if settings.telemetry.log_format == "json" { LogFormat::Json } else { LogFormat::Pretty },
        otlp_endpoint: settings.telemetry.otlp_endpoint.clone(),
        // Exporting: Herald's spans whatever the logs' filter (the cluster logs only warnings).
        // Not exporting: the logs' filter, so no span is made only to be dropped (a tracing
        // layer that sees what the logs do not costs measurably on the embedded hot path).
        trace_filter: match &settings.telemetry.otlp_endpoint {
            Some(_) => "info,sqlx=warn".to_owned(),
            None => settings.telemetry.filter.clone(),
        },
    })
    .context("installing logs and traces")?;
    mallbots::metrics::trace_every_request(settings.telemetry.otlp_endpoint.is_some());
    if let Some(file) = &file {
        tracing::info!(file = %file.display(), "settings read");
    }
    let config = Config {
        ephemeral_broker: args.ephemeral_broker,
        sms_latency: Duration::from_millis(args.sms_latency_ms),
        ..settings.app_config()
    };
    let app = App::build(config).await?;
    match app.token_source() {
        TokenSource::Generated(file) => {
            println!("Admin token (generated; shown only this once): {}", app.admin_token());
            if let Some(file) = file {
                println!("It is kept in {}.", file.display());
            }
        }
        TokenSource::Stored(file) => println!("Admin token: read from {}", file.display()),
        TokenSource::Configured => {}
    }
    // `MallBots on <url>` is what scripts and `simulate` wait for: keep it first on its line.
    let addr = app.local_addr();
    let web_app = if app.module_names().contains(&"admin") {
        format!("admin web app at http://{addr}/admin; ")
    } else {
        String::new()
    };
    println!(
        "MallBots on http://{addr} ({web_app}API docs at http://{addr}/docs; gRPC on {}; modules: {})",
        app.grpc_addr(),
        app.module_names().join(", ")
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run(shutdown).await.context("running MallBots")
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
