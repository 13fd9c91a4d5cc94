//! `mallbots simulate`: the load generator. N concurrent kiosks place orders (register, basket,
//! items, authorize the payment, check out) and wait for the saga's decision; shopper bots on
//! the depot's gRPC stream (`--bots`) or else the admin workers complete the shopping lists, and
//! the admins pay the invoices, so orders reach `completed`. At the end, a
//! [`Report`]: orders/s, checkout → approved and checkout → completed percentiles, errors by
//! kind, orders by final status, the same counts and latencies interval by interval, and, when
//! the simulator started the server itself, the server's CPU time and resident memory; written
//! as JSON and as an HTML page with charts ([`Report::write`]).
//!
//! * [`client`]: a small pooled JSON/HTTP client with a timeout per request.
//! * `kiosk`, `admin`: the two kinds of worker.
//! * [`server`]: the embedded server (`mallbots serve` as a child process in a temp dir).
//! * `stats`, [`report`]: what is measured and how it is reported; `plot`: the HTML page and
//!   its SVG charts.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use mallbots::simulate::{Config, Progress, Target, server::ServerConfig};
//! let config = Config {
//!     kiosks: 8,
//!     target: Target::Embedded(ServerConfig::current_exe()?),
//!     progress: Progress::Quiet,
//!     ..Config::default()
//! };
//! let report = mallbots::simulate::run(config, tokio_util::sync::CancellationToken::new()).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod admin;
pub mod client;
mod kiosk;
mod plot;
pub mod report;
pub mod server;
mod stats;

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use client::Client;
pub use report::Report;
use server::{Server, ServerConfig};
use stats::{Stage, Stats};

/// Which server to load.
#[derive(Clone, Debug)]
pub enum Target {
    /// Start `mallbots serve` as a child process (a SQLite file in a temp dir by default).
    Embedded(ServerConfig),
    /// A running server.
    Url {
        /// `http://HOST:PORT`.
        url: String,
        /// Its admin token (the admins need it).
        admin_token: String,
        /// Its gRPC address, `http://HOST:PORT` (the bots need it).
        grpc_url: Option<String>,
    },
}

/// How the run shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A live bar on a terminal; a line every 5 s otherwise (both on stderr).
    Show,
    /// Nothing (tests, scripts).
    Quiet,
}

/// A run of the simulator.
#[derive(Clone, Debug)]
pub struct Config {
    /// Kiosks placing orders concurrently (each one order at a time).
    pub kiosks: usize,
    /// Admin workers completing shopping lists and paying invoices (each works on many orders
    /// at once; the kiosks hand their approved orders to them in turn).
    pub admins: usize,
    /// Shopper bots on the depot's gRPC stream (0: the admins complete the shopping lists by
    /// REST instead).
    pub bots: usize,
    /// How long a bot takes at each stop.
    pub bot_pick: Duration,
    /// How long new orders are placed.
    pub duration: Duration,
    /// After that, how long in-flight orders may take to reach a final status.
    pub drain: Duration,
    /// The server.
    pub target: Target,
    /// The timeout of every request.
    pub request_timeout: Duration,
    pub progress: Progress,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kiosks: 16,
            admins: 2,
            bots: 0,
            bot_pick: Duration::from_millis(20),
            duration: Duration::from_secs(30),
            drain: Duration::from_secs(10),
            target: Target::Url { url: "http://127.0.0.1:8080".into(), admin_token: String::new(), grpc_url: None },
            request_timeout: Duration::from_secs(10),
            progress: Progress::Show,
        }
    }
}

/// Stores and products set up for the run.
const STORES: usize = 3;
const PRODUCTS_PER_STORE: usize = 4;

/// A product the kiosks can put in a basket.
#[derive(Clone, Debug)]
struct Product {
    id: String,
    price_cents: i64,
}

/// What every worker shares.
#[derive(Debug)]
struct Shared {
    client: Client,
    stats: Stats,
    catalog: Vec<Product>,
    /// Each admin's in-tray of approved orders.
    admins: Vec<mpsc::Sender<admin::Approved>>,
    /// Bots complete the shopping lists (the admins only pay the invoices).
    bots: bool,
    /// Cancelled when the load phase ends: kiosks place no new order.
    load: CancellationToken,
    /// Cancelled when the run ends: every worker stops at once.
    halt: CancellationToken,
}

/// A poll interval growing from 5 ms by a quarter each time up to `max`: the first answers
/// come quickly (latency is not dominated by polling) and a long wait costs few requests.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// For an order's status or invoice: 5 ms, growing to 100 ms (a latency is then over-read
    /// by at most a quarter or 100 ms; every poll of an order loads it in a transaction on the
    /// server, so polling much faster would measure the polling).
    fn polling() -> Self {
        Self { next: Duration::from_millis(5), max: Duration::from_millis(100) }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next + self.next / 4).min(self.max);
    }
}

/// Runs the simulation: set-up, `config.duration` of load (or until `stop` is cancelled), then
/// up to `config.drain` for the orders in flight; returns the report. With an embedded server,
/// the server is stopped and its temporary directory removed before returning.
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<Report> {
    anyhow::ensure!(config.kiosks > 0, "at least one kiosk is needed");
    anyhow::ensure!(config.admins > 0, "at least one admin is needed");
    let quiet = config.progress == Progress::Quiet;
    let (server, url, grpc_url, admin_token) = match &config.target {
        Target::Embedded(server_config) => {
            if !quiet {
                eprintln!("Starting an embedded server ({} serve)…", server_config.exe.display());
            }
            let server = Server::start(server_config).await?;
            let (url, grpc, token) = (server.url.clone(), server.grpc_url.clone(), server.admin_token.clone());
            (Some(server), url, Some(grpc), token)
        }
        Target::Url { url, admin_token, grpc_url } => {
            anyhow::ensure!(!admin_token.is_empty(), "the admin token of the target is needed (--admin-token)");
            (None, url.clone(), grpc_url.clone(), admin_token.clone())
        }
    };
    let grpc_url = match grpc_url.filter(|g| !g.is_empty()) {
        Some(grpc) => grpc,
        None if config.bots > 0 => anyhow::bail!("bots need the target's gRPC address (--grpc-target)"),
        None => String::new(),
    };
    let result = drive(&config, &url, &grpc_url, &admin_token, server.as_ref(), stop).await;
    if let Some(server) = server {
        if result.is_err() && !quiet {
            eprintln!("--- server log (tail)\n{}", server.log_tail(20));
        }
        server.stop().await.context("stopping the embedded server")?;
    }
    result
}

async fn drive(
    config: &Config,
    url: &str,
    grpc_url: &str,
    admin_token: &str,
    server: Option<&Server>,
    stop: CancellationToken,
) -> anyhow::Result<Report> {
    let quiet = config.progress == Progress::Quiet;
    let client = Client::new(url, Some(admin_token), config.request_timeout)?;
    wait_until_ready(&client).await?;
    if !quiet {
        eprintln!("Server on {url}; setting up {STORES} stores with {PRODUCTS_PER_STORE} products each…");
    }
    let catalog = set_up_catalog(&client).await?;

    let (trays, in_trays): (Vec<_>, Vec<_>) = (0..config.admins).map(|_| mpsc::channel(1024)).unzip();
    let shared = Arc::new(Shared {
        client,
        stats: Stats::new(config.duration + config.drain),
        catalog,
        admins: trays,
        bots: config.bots > 0,
        load: CancellationToken::new(),
        halt: CancellationToken::new(),
    });
    let pid = server.map(Server::pid);
    let server_before = pid.and_then(server::usage);
    let client_before = server::usage(std::process::id());
    let rss_samples = Arc::new(Mutex::new(Vec::new()));
    let mut helpers = JoinSet::new();
    if let Some(pid) = pid {
        helpers.spawn(sample_rss(pid, rss_samples.clone(), shared.halt.clone()));
    }

    let started = shared.stats.started();
    let mut kiosks = JoinSet::new();
    for kiosk in 0..config.kiosks {
        kiosks.spawn(kiosk::run(kiosk, shared.clone()));
    }
    let mut admins = JoinSet::new();
    for (admin, in_tray) in in_trays.into_iter().enumerate() {
        admins.spawn(admin::run(admin, in_tray, shared.clone()));
    }
    let bot_stats = Arc::new(crate::bot::BotStats::default());
    for n in 1..=config.bots {
        let bot = crate::bot::BotConfig {
            id: format!("simulated-bot-{n}"),
            url: grpc_url.to_owned(),
            token: admin_token.to_owned(),
            pick: config.bot_pick,
        };
        admins.spawn(crate::bot::run(bot, bot_stats.clone(), shared.halt.clone()));
    }
    if !quiet {
        helpers.spawn(show_progress(shared.clone(), started, config.duration));
    }

    tokio::select! {
        () = tokio::time::sleep(config.duration) => {}
        () = stop.cancelled() => {}
    }
    shared.load.cancel();
    shared.stats.end_load();
    let load_seconds = started.elapsed().as_secs_f64();

    // Drain: the kiosks finish the order in hand, the admins complete what was approved.
    let drain_started = Instant::now();
    let drain_deadline = tokio::time::Instant::now() + config.drain;
    loop {
        while kiosks.try_join_next().is_some() {}
        if kiosks.is_empty() && shared.stats.in_flight() == 0 {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(drain_deadline) => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    shared.halt.cancel();
    while kiosks.join_next().await.is_some() {}
    while admins.join_next().await.is_some() {}
    while helpers.join_next().await.is_some() {}
    let ended = Instant::now();

    let server_after = pid.and_then(server::usage);
    let client_after = server::usage(std::process::id());
    let stats = &shared.stats;
    let placed = stats.placed.load(Ordering::Relaxed);
    let by_stage = stats.by_stage();
    let count = |stage| by_stage.get(&stage).copied().unwrap_or(0);
    let server_usage = match (server_before, server_after) {
        (Some(before), Some(after)) => {
            let cpu_seconds = after.cpu_seconds - before.cpu_seconds;
            let samples = rss_samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let samples = if samples.is_empty() { vec![after.rss_kib] } else { samples };
            Some(report::ServerUsage {
                cpu_seconds: round2(cpu_seconds),
                cpu_ms_per_order: if placed == 0 { 0.0 } else { round2(cpu_seconds * 1000.0 / placed as f64) },
                rss_kib: report::Rss {
                    first: samples[0],
                    last: samples[samples.len() - 1],
                    min: samples.iter().copied().min().unwrap_or(0),
                    max: samples.iter().copied().max().unwrap_or(0),
                    // VmHWM is updated lazily by the kernel: never below a sample.
                    peak: samples.iter().copied().chain([after.peak_rss_kib, after.rss_kib]).max().unwrap_or(0),
                },
                rss_samples_kib: samples,
            })
        }
        _ => None,
    };
    let approved_during_load = stats.approved_in_load.load(Ordering::Relaxed);
    Ok(Report {
        target: url.to_owned(),
        embedded_server: server.is_some(),
        database: server.map(|s| s.database.clone()),
        broker: match &config.target {
            Target::Embedded(c) => c.broker.clone(),
            Target::Url { .. } => None,
        },
        namespace: server.and_then(|s| s.namespace.clone()),
        kiosks: config.kiosks,
        admins: config.admins,
        bots: (config.bots > 0).then(|| report::Bots {
            count: config.bots,
            lists_completed: bot_stats.lists_completed.load(Ordering::Relaxed),
            stops_picked: bot_stats.stops_picked.load(Ordering::Relaxed),
            connections: bot_stats.connections.load(Ordering::Relaxed),
        }),
        load_seconds: round2(load_seconds),
        drain_seconds: round2(drain_seconds),
        orders_per_second: round2(approved_during_load as f64 / load_seconds.max(0.001)),
        orders: report::Orders {
            placed,
            approved: stats.approved.load(Ordering::Relaxed),
            approved_during_load,
            rejected: stats.rejected.load(Ordering::Relaxed),
            completed: stats.completed.load(Ordering::Relaxed),
        },
        final_status: report::FinalStatus {
            completed: count(Stage::Completed),
            approved: count(Stage::Approved),
            rejected: count(Stage::Rejected),
            other: count(Stage::Other),
            timeout: count(Stage::Pending) + count(Stage::TimedOut),
        },
        checkout_to_approved_ms: report::Latency::of(&stats.to_approved()),
        checkout_to_completed_ms: report::Latency::of(&stats.to_completed()),
        errors: report::Errors { total: stats.errors.load(Ordering::Relaxed), by_kind: stats.error_kinds() },
        requests: shared.client.sent(),
        requests_per_order: if placed == 0 { 0.0 } else { round2(shared.client.sent() as f64 / placed as f64) },
        server: server_usage,
        client_cpu_seconds: match (client_before, client_after) {
            (Some(before), Some(after)) => Some(round2(after.cpu_seconds - before.cpu_seconds)),
            _ => None,
        },
        timeline: stats.timeline(ended),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Waits up to a minute for `/readyz` to answer 200.
async fn wait_until_ready(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match client.get("/readyz", false).await {
            Ok(answer) if answer.status == StatusCode::OK => return Ok(()),
            Ok(answer) => format!("HTTP {}", answer.status),
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(Instant::now() < deadline, "{} is not ready after a minute ({last})", client.base());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the stores and products, then waits until the baskets module knows every product
/// (it learns them from the stores' events): adding each to a throw-away basket works.
async fn set_up_catalog(client: &Client) -> anyhow::Result<Vec<Product>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let mut catalog = Vec::new();
    for s in 0..STORES {
        let store = client
            .create(
                "/api/stores",
                json!({ "name": format!("Simulated store {s} ({run})"), "location": format!("Level {s}") }),
                true,
            )
            .await
            .context("creating a store")?;
        for p in 0..PRODUCTS_PER_STORE {
            // 1.99, 4.49, 6.99, …: varied totals.
            let price_cents = 199 + 250 * (s * PRODUCTS_PER_STORE + p) as i64;
            let price = format!("{}.{:02}", price_cents / 100, price_cents % 100);
            let id = client
                .create(
                    &format!("/api/stores/{store}/products"),
                    json!({ "name": format!("Product {s}-{p}"), "sku": format!("SIM-{run}-{s}-{p}"), "price": price }),
                    true,
                )
                .await
                .context("creating a product")?;
            catalog.push(Product { id, price_cents });
        }
    }
    let customer = client
        .create("/api/customers", json!({ "name": "Warm-up", "smsNumber": "555 0100" }), false)
        .await
        .context("registering the warm-up customer")?;
    let basket =
        client.create("/api/baskets", json!({ "customerId": customer }), false).await.context("starting a basket")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for product in &catalog {
        loop {
            let answer = client
                .put(
                    &format!("/api/baskets/{basket}/addItem"),
                    Some(json!({ "productId": product.id, "quantity": 1 })),
                    false,
                )
                .await
                .context("adding a product to the warm-up basket")?;
            if answer.status == StatusCode::NO_CONTENT {
                break;
            }
            anyhow::ensure!(
                answer.status == StatusCode::NOT_FOUND && Instant::now() < deadline,
                "the baskets module does not know product {} (HTTP {})",
                product.id,
                answer.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Best effort: the warm-up basket is not an order.
    let _ = client.send(hyper::Method::DELETE, &format!("/api/baskets/{basket}"), None, false).await;
    Ok(catalog)
}

/// Samples the server's resident memory every second until `halt`.
async fn sample_rss(pid: u32, samples: Arc<Mutex<Vec<u64>>>, halt: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = halt.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(usage) = server::usage(pid) {
            samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(usage.rss_kib);
        }
    }
}

/// A live bar on a terminal (redrawn every 250 ms), else a line every 5 s; on stderr.
async fn show_progress(shared: Arc<Shared>, started: Instant, duration: Duration) {
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new_spinner();
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            () = shared.halt.cancelled() => break,
            _ = tick.tick() => {}
        }
        let stats = &shared.stats;
        let approved = stats.approved.load(Ordering::Relaxed);
        let load_elapsed = started.elapsed().min(duration).as_secs_f64().max(0.001);
        let phase = if shared.load.is_cancelled() {
            format!("draining, {} in flight", stats.in_flight())
        } else {
            format!("load {:.0}/{} s", started.elapsed().as_secs_f64(), duration.as_secs())
        };
        let message = format!(
            "{phase} | placed {} | approved {approved} ({:.1}/s) | completed {} | rejected {} | errors {}",
            stats.placed.load(Ordering::Relaxed),
            stats.approved_in_load.load(Ordering::Relaxed) as f64 / load_elapsed,
            stats.completed.load(Ordering::Relaxed),
            stats.rejected.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
        );
        if terminal {
            bar.set_message(message);
            bar.tick();
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            eprintln!("[{:>5.1} s] {message}", started.elapsed().as_secs_f64());
        }
    }
    bar.finish_and_clear();
}
