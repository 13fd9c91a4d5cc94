//! The report of a run: printed as a table, written as JSON (`--report`) and, beside it, as an
//! HTML page with charts (drawn by `plot`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The server's URL.
    pub target: String,
    /// Whether the simulator started the server itself (then `server` is measured).
    pub embedded_server: bool,
    /// The embedded server's database, broker and namespace (unset: not known or defaults).
    pub database: Option<String>,
    pub broker: Option<String>,
    pub namespace: Option<String>,
    pub kiosks: usize,
    pub admins: usize,
    /// The shopper bots, when they completed the lists.
    pub bots: Option<Bots>,
    /// How long orders were placed, seconds.
    pub load_seconds: f64,
    /// How long in-flight orders were then given to finish, seconds.
    pub drain_seconds: f64,
    /// Orders approved during the load phase per second of it.
    pub orders_per_second: f64,
    pub orders: Orders,
    /// Where each placed order ended the run.
    pub final_status: FinalStatus,
    pub checkout_to_approved_ms: Latency,
    pub checkout_to_completed_ms: Latency,
    pub errors: Errors,
    /// HTTP requests sent (polls included).
    pub requests: u64,
    /// `requests` per placed order (set-up and polls included).
    pub requests_per_order: f64,
    /// The embedded server's CPU and memory over the load and drain phases.
    pub server: Option<ServerUsage>,
    /// The simulator's own CPU seconds over the same time (it shares the machine).
    pub client_cpu_seconds: Option<f64>,
    /// The run interval by interval (the charts' data).
    pub timeline: Timeline,
}

/// The run cut into intervals of equal length, from the start of the load phase to the end of
/// the drain. Events are counted in the interval the simulator saw them in.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    /// The intervals' length, seconds: a round number, at least 1, giving at most about 120.
    pub interval_seconds: f64,
    pub intervals: Vec<Interval>,
}

/// One interval of the [`Timeline`].
#[derive(Clone, Debug, Serialize)]
pub struct Interval {
    /// Seconds from the start of the load phase.
    pub start_seconds: f64,
    /// Its length, seconds: `interval_seconds`, except the last one (up to the end of the run).
    pub seconds: f64,
    /// Orders checked out.
    pub placed: u64,
    /// Orders seen approved.
    pub approved: u64,
    /// Orders seen completed.
    pub completed: u64,
    /// Orders seen rejected.
    pub rejected: u64,
    /// Failed requests.
    pub errors: u64,
    /// Checkout → approved of the orders approved in it, milliseconds (unset: none was).
    pub approved_p50_ms: Option<f64>,
    pub approved_p95_ms: Option<f64>,
}

/// What the shopper bots did.
#[derive(Clone, Debug, Serialize)]
pub struct Bots {
    pub count: usize,
    pub lists_completed: u64,
    pub stops_picked: u64,
    /// Streams opened (more than `count`: some reconnected).
    pub connections: u64,
}

/// Order counts.
#[derive(Clone, Debug, Serialize)]
pub struct Orders {
    /// Checked out.
    pub placed: u64,
    /// Approved by the saga (during load or drain).
    pub approved: u64,
    /// Approved during the load phase (the orders/s numerator).
    pub approved_during_load: u64,
    pub rejected: u64,
    pub completed: u64,
}

/// Placed orders by where they ended; the five add up to `orders.placed`.
#[derive(Clone, Debug, Serialize)]
pub struct FinalStatus {
    pub completed: u64,
    /// Approved, not completed when the run ended.
    pub approved: u64,
    pub rejected: u64,
    /// Ready, canceled or another status the simulator does not drive.
    pub other: u64,
    /// No decision from the saga within 30 s or before the run ended.
    pub timeout: u64,
}

/// A latency distribution, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Microseconds as milliseconds, to two decimals.
pub(super) fn micros_to_ms(micros: f64) -> f64 {
    (micros / 10.0).round() / 100.0
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn of(micros: &Histogram<u64>) -> Self {
        let ms = micros_to_ms;
        let q = |q: f64| if micros.is_empty() { 0.0 } else { ms(micros.value_at_quantile(q) as f64) };
        Self {
            count: micros.len(),
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: if micros.is_empty() { 0.0 } else { ms(micros.max() as f64) },
            mean: if micros.is_empty() { 0.0 } else { ms(micros.mean()) },
        }
    }
}

/// Failed requests.
#[derive(Clone, Debug, Serialize)]
pub struct Errors {
    pub total: u64,
    /// By `step: kind` (`checkout: HTTP 409`, `poll order: timeout`, …).
    pub by_kind: BTreeMap<String, u64>,
}

/// The server process's resources.
#[derive(Clone, Debug, Serialize)]
pub struct ServerUsage {
    /// CPU seconds (user + system) over the load and drain phases.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per placed order, milliseconds.
    pub cpu_ms_per_order: f64,
    /// Resident memory sampled every second, KiB.
    pub rss_kib: Rss,
    /// The samples, one a second from the start of the load phase.
    pub rss_samples_kib: Vec<u64>,
}

/// A summary of the resident-memory samples, KiB.
#[derive(Clone, Debug, Serialize)]
pub struct Rss {
    pub first: u64,
    pub last: u64,
    pub min: u64,
    pub max: u64,
    /// The process's high-water mark since it started (`VmHWM`, setup included).
    pub peak: u64,
}

impl Report {
    /// Writes the report as JSON to `json` and as an HTML page with charts beside it
    /// ([`html_path`]); returns the page's path.
    pub fn write(&self, json: &Path) -> anyhow::Result<PathBuf> {
        let text = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
        let html = html_path(json);
        std::fs::write(&html, super::plot::html(self)).with_context(|| format!("writing {}", html.display()))?;
        Ok(html)
    }

    /// The figures, as (name, value) rows: the printed table's and the HTML page's. A row with
    /// no name continues the one above.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let latency = |l: &Latency| {
            format!("p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  ({} orders)", l.p50, l.p95, l.p99, l.max, l.count)
        };
        let mut rows = Vec::new();
        let server = match (self.embedded_server, &self.database) {
            (true, Some(db)) => format!(
                "{} (embedded: {db}{})",
                self.target,
                self.broker.as_ref().map_or(String::new(), |b| format!(", {b}"))
            ),
            _ => self.target.clone(),
        };
        rows.push(("server", server));
        if let Some(namespace) = &self.namespace {
            rows.push(("namespace", namespace.clone()));
        }
        rows.push(("kiosks / admins", format!("{} / {}", self.kiosks, self.admins)));
        if let Some(bots) = &self.bots {
            rows.push((
                "shopper bots",
                format!(
                    "{}: {} lists completed, {} stops picked, {} connections",
                    bots.count, bots.lists_completed, bots.stops_picked, bots.connections
                ),
            ));
        }
        rows.push(("load / drain", format!("{:.1} s / {:.1} s", self.load_seconds, self.drain_seconds)));
        rows.push(("orders placed", self.orders.placed.to_string()));
        rows.push(("orders/s (approved in load)", format!("{:.1}", self.orders_per_second)));
        rows.push(("checkout → approved, ms", latency(&self.checkout_to_approved_ms)));
        rows.push(("checkout → completed, ms", latency(&self.checkout_to_completed_ms)));
        let s = &self.final_status;
        rows.push((
            "final status",
            format!(
                "completed {}  approved {}  rejected {}  other {}  timeout {}",
                s.completed, s.approved, s.rejected, s.other, s.timeout
            ),
        ));
        rows.push(("errors", self.errors.total.to_string()));
        for (kind, count) in &self.errors.by_kind {
            rows.push(("", format!("{count} × {kind}")));
        }
        rows.push((
            "HTTP requests",
            format!("{} ({:.1} per order, polls included)", self.requests, self.requests_per_order),
        ));
        if let Some(server) = &self.server {
            rows.push((
                "server CPU",
                format!("{:.1} s ({:.2} ms per order)", server.cpu_seconds, server.cpu_ms_per_order),
            ));
            let r = &server.rss_kib;
            let mib = |kib: u64| kib as f64 / 1024.0;
            rows.push((
                "server RSS, MiB",
                format!(
                    "first {:.1}  last {:.1}  min {:.1}  max {:.1}  peak {:.1}",
                    mib(r.first),
                    mib(r.last),
                    mib(r.min),
                    mib(r.max),
                    mib(r.peak)
                ),
            ));
        }
        if let Some(cpu) = self.client_cpu_seconds {
            rows.push(("simulator CPU", format!("{cpu:.1} s")));
        }
        rows
    }
}

/// Where the HTML page of a JSON report at `json` goes: the same path with `.html` instead of
/// its extension (`.html` appended when it already is `.html`: neither overwrites the other).
pub fn html_path(json: &Path) -> PathBuf {
    let html = json.with_extension("html");
    if html == json {
        let mut name = json.as_os_str().to_owned();
        name.push(".html");
        return PathBuf::from(name);
    }
    html
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "MallBots simulation report")?;
        for (name, value) in self.rows() {
            writeln!(f, "  {name:<28} {value}")?;
        }
        Ok(())
    }
}
