//! # herald-bench: the loops every Herald benchmark binary shares
//!
//! Herald's benchmarks measure an adapter **beside its raw client doing the same work, in the
//! same run**, because the machine they run on is shared and noisy: absolute rates move 2–3×
//! between runs, the ratio much less. This crate holds what the bench binaries
//! (`crates/*/benches/*.rs`) would otherwise copy from each other:
//!
//! * [`Queue`] and [`Consume`]: the two halves of "a queue" as a benchmark sees it. Herald's
//!   [`Publisher`] and [`Subscription`] get them from [`HeraldQueue`] and [`HeraldConsumer`];
//!   each bench binary implements them once over its raw client.
//! * [`throughput`]: publish N messages in batches while one consumer takes and acknowledges
//!   them; messages per second from the first publish to the last ack.
//! * [`paced`]: publish at a fixed rate and record publish → delivery latency in an HDR
//!   histogram (p50 / p99 / max), which a burst cannot show (there latency is queueing).
//! * [`compare`]: interleaved rounds (raw, Herald, raw, Herald…) so both sides see the same
//!   neighbours, with medians and the per-round ratio.
//! * [`Table`]: Markdown rows, as pasted into `BENCHMARKS.md`.
//!
//! Timestamps travel in the payload (the first 8 bytes, microseconds since a process-wide
//! epoch, see [`stamp`]), so the same measurement works for every queue without touching
//! headers or metadata.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use futures::FutureExt as _;
use hdrhistogram::Histogram;
use herald::{Message, Publisher, StartFrom, SubscribeOptions, Subscriber, Subscription};

/// How long a consumer may go without receiving anything before a run is declared stalled.
pub const STALL: Duration = Duration::from_secs(30);

/// A size for a bench binary: the environment variable `var` if set, else the first numeric
/// command-line argument (`cargo bench -p x --bench y -- 5000`), else `default`.
pub fn size(var: &str, default: usize) -> usize {
    if let Some(n) = std::env::var(var).ok().and_then(|v| v.trim().parse().ok()) {
        return n;
    }
    std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(default)
}

/// A setting from the environment variable `var` only (so a numeric argument meant for
/// [`size`] does not change it), else `default`.
pub fn setting(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// A name unique to this run of a bench binary (process id and start time), to put in stream,
/// key and schema names so concurrent runs and leftovers of killed runs never collide.
pub fn run_id() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{secs}{}", std::process::id())
}

/// Whether something accepts TCP connections at `addr` (`host:port`) within a second; bench
/// binaries skip with a message instead of panicking when their server is not there.
pub fn reachable(addr: &str) -> bool {
    let Ok(addrs) = addr.to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// `host:port` of a `scheme://[user@]host:port[/…]` URL (for [`reachable`]).
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.contains(':') { host.to_owned() } else { format!("{host}:{default_port}") }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A payload of `size` bytes (at least 8) starting with the current time.
pub fn stamp(size: usize) -> Vec<u8> {
    let mut payload = now_us().to_le_bytes().to_vec();
    payload.resize(size.max(8), b'x');
    payload
}

/// Microseconds since `payload` was [`stamp`]ed (`None` if it is not a stamped payload).
pub fn age_us(payload: &[u8]) -> Option<u64> {
    let sent = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some(now_us().saturating_sub(sent))
}

/// One message to publish, as a benchmark sees it.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The ordering key (`k0`…`k{keys-1}`).
    pub key: String,
    /// A [`stamp`]ed payload.
    pub payload: Vec<u8>,
}

/// The publishing half of a queue under test.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Publishes `batch`, returning once the queue has accepted (stored) all of it.
    async fn publish(&self, batch: Vec<Outgoing>) -> anyhow::Result<()>;
}

/// What a [`Consume`] calls with each payload it receives. (Spelled out here, outside
/// `async_trait`, which would otherwise name the argument's lifetime and break the
/// higher-ranked bound.)
pub type Seen<'s> = dyn for<'a> FnMut(&'a [u8]) + Send + 's;

/// The consuming half of a queue under test.
#[async_trait]
pub trait Consume: Send {
    /// Waits for at least one message, takes whatever else is already there (up to the
    /// consumer's batch), calls `seen` with each payload as it is received, then acknowledges
    /// each message individually and returns how many it took.
    async fn next(&mut self, seen: &mut Seen<'_>) -> anyhow::Result<usize>;
}

/// [`Queue`] over a Herald [`Publisher`]: every message goes to `topic` as `name`.
#[derive(Debug)]
pub struct HeraldQueue {
    publisher: Arc<dyn Publisher>,
    topic: String,
    name: String,
}

impl HeraldQueue {
    /// Publishes through `publisher` to `topic`.
    pub fn new(publisher: Arc<dyn Publisher>, topic: impl Into<String>) -> Self {
        Self { publisher, topic: topic.into(), name: "bench.Event.v1".to_owned() }
    }
}

#[async_trait]
impl Queue for HeraldQueue {
    async fn publish(&self, batch: Vec<Outgoing>) -> anyhow::Result<()> {
        let messages: Vec<Message> = batch
            .into_iter()
            .map(|o| Message::new(self.topic.as_str(), self.name.as_str(), o.payload).with_key(o.key))
            .collect();
        self.publisher.publish(&messages).await?;
        Ok(())
    }
}

/// [`Consume`] over a Herald [`Subscription`]: takes the deliveries already buffered (up to
/// `batch`) and acks them concurrently, each with its own [`Delivery::ack`](herald::Delivery::ack),
/// as a router handling them concurrently would.
#[derive(Debug)]
pub struct HeraldConsumer {
    subscription: Subscription,
    batch: usize,
}

impl HeraldConsumer {
    /// Consumes `subscription`, taking at most `batch` deliveries at a time.
    pub fn new(subscription: Subscription, batch: usize) -> Self {
        Self { subscription, batch: batch.max(1) }
    }
}

#[async_trait]
impl Consume for HeraldConsumer {
    async fn next(&mut self, seen: &mut Seen<'_>) -> anyhow::Result<usize> {
        let first = self.subscription.next().await.context("the subscription ended")?;
        let mut deliveries = vec![first];
        while deliveries.len() < self.batch {
            match self.subscription.next().now_or_never() {
                Some(Some(d)) => deliveries.push(d),
                _ => break,
            }
        }
        for d in &deliveries {
            seen(&d.message.payload);
        }
        let n = deliveries.len();
        futures::future::try_join_all(deliveries.into_iter().map(herald::Delivery::ack)).await?;
        Ok(n)
    }
}

/// What one run measured: a rate and (when it measured any) publish → delivery latencies in
/// microseconds.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Messages (or rows, events…) per second.
    pub rate: f64,
    /// Publish → delivery latency, µs.
    pub latency: Histogram<u64>,
    /// How long publishing alone took, where the loop measured it (to tell a slow producer from
    /// a slow consumer).
    pub publishing: Option<Duration>,
}

impl Sample {
    /// A sample with a rate and no latencies.
    pub fn rate(rate: f64) -> anyhow::Result<Self> {
        Ok(Self { rate, latency: histogram()?, publishing: None })
    }
}

/// An empty latency histogram: 1 µs to 10 minutes, 3 significant digits. (Fixed bounds, because
/// `saturating_record` on an auto-resizing histogram clamps to its *current* range.)
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// `n` things in `elapsed`, per second.
pub fn per_sec(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A burst: how many messages, in publish batches of what size, over how many keys.
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    /// Messages in all.
    pub messages: usize,
    /// Messages per publish call (one call awaited at a time).
    pub batch: usize,
    /// Distinct keys, round robin.
    pub keys: usize,
    /// Payload bytes.
    pub payload: usize,
}

fn outgoing(first: usize, n: usize, keys: usize, payload: usize) -> Vec<Outgoing> {
    (first..first + n).map(|i| Outgoing { key: format!("k{}", i % keys.max(1)), payload: stamp(payload) }).collect()
}

/// Consumes until `expected` messages were seen, recording each one's age on receipt.
async fn consume(consumer: &mut dyn Consume, expected: usize) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram()?;
    let mut seen = 0;
    let mut bad = 0usize;
    while seen < expected {
        let mut record = |payload: &[u8]| match age_us(payload) {
            Some(us) => latency.saturating_record(us.max(1)),
            None => bad += 1,
        };
        let n = tokio::time::timeout(STALL, consumer.next(&mut record))
            .await
            .with_context(|| format!("nothing received for {STALL:?} after {seen} of {expected} messages"))??;
        seen += n;
    }
    anyhow::ensure!(bad == 0, "{bad} payloads without a timestamp");
    Ok(latency)
}

/// Publishes `burst.messages` (one batch awaited at a time, from a task of its own) while
/// `consumer` takes and acks them. The rate counts from the first publish to the last ack; the
/// latencies are mostly queueing behind the burst.
pub async fn throughput(queue: Arc<dyn Queue>, consumer: &mut dyn Consume, burst: Burst) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < burst.messages {
            let n = burst.batch.max(1).min(burst.messages - sent);
            queue.publish(outgoing(sent, n, burst.keys, burst.payload)).await?;
            sent += n;
        }
        anyhow::Ok(start.elapsed())
    });
    let latency = consume(consumer, burst.messages).await;
    let elapsed = start.elapsed();
    let publishing = producer.await.context("the producer panicked")??;
    Ok(Sample { rate: per_sec(burst.messages, elapsed), latency: latency?, publishing: Some(publishing) })
}

/// A steady rate: `per_tick` messages every `per_tick / rate` seconds until `messages` were sent.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Messages per second offered.
    pub rate: usize,
    /// Messages per publish call.
    pub per_tick: usize,
    /// Messages in all.
    pub messages: usize,
    /// Distinct keys, round robin.
    pub keys: usize,
    /// Payload bytes.
    pub payload: usize,
}

/// Publishes at `pace` while `consumer` takes and acks; the sample's latency is publish →
/// delivery (the stamp is taken just before each publish call) and its rate the rate achieved
/// (below the offered one only if the queue could not keep up).
pub async fn paced(queue: Arc<dyn Queue>, consumer: &mut dyn Consume, pace: Pace) -> anyhow::Result<Sample> {
    let per_tick = pace.per_tick.max(1);
    let period = Duration::from_secs_f64(per_tick as f64 / pace.rate.max(1) as f64);
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0;
        while sent < pace.messages {
            tick.tick().await;
            let n = per_tick.min(pace.messages - sent);
            queue.publish(outgoing(sent, n, pace.keys, pace.payload)).await?;
            sent += n;
        }
        anyhow::Ok(())
    });
    let latency = consume(consumer, pace.messages).await;
    let elapsed = start.elapsed();
    let produced = producer.await.context("the producer panicked")?;
    produced?;
    Ok(Sample { rate: per_sec(pace.messages, elapsed), latency: latency?, publishing: None })
}

/// What one round measures: a burst or a paced run.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// [`throughput`].
    Burst(Burst),
    /// [`paced`].
    Pace(Pace),
}

impl Work {
    /// Runs this work through `queue` and `consumer`.
    pub async fn run(self, queue: Arc<dyn Queue>, consumer: &mut dyn Consume) -> anyhow::Result<Sample> {
        match self {
            Self::Burst(b) => throughput(queue, consumer, b).await,
            Self::Pace(p) => paced(queue, consumer, p).await,
        }
    }
}

/// One Herald round on `broker`: subscribes group `bench` to `topic` from the beginning with
/// `in_flight` deliveries at most, runs `work` through [`HeraldQueue`] and [`HeraldConsumer`],
/// then closes the broker (the caller removes the topic's storage).
pub async fn herald_round<B>(broker: B, topic: &str, in_flight: usize, work: Work) -> anyhow::Result<Sample>
where
    B: Publisher + Subscriber + Clone + 'static,
{
    let options = SubscribeOptions::new(topic, "bench").start(StartFrom::Beginning).max_in_flight(in_flight);
    let subscription = broker.subscribe(options).await?;
    let mut consumer = HeraldConsumer::new(subscription, in_flight);
    let queue = Arc::new(HeraldQueue::new(Arc::new(broker.clone()), topic));
    let sample = work.run(queue, &mut consumer).await;
    drop(consumer);
    Publisher::close(&broker).await?;
    sample
}

/// Both sides of a comparison, one sample per round.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// The raw client's samples.
    pub raw: Vec<Sample>,
    /// Herald's samples.
    pub herald: Vec<Sample>,
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Comparison {
    /// Median raw rate.
    pub fn raw_rate(&self) -> f64 {
        median(&self.raw.iter().map(|s| s.rate).collect::<Vec<_>>())
    }

    /// Median Herald rate.
    pub fn herald_rate(&self) -> f64 {
        median(&self.herald.iter().map(|s| s.rate).collect::<Vec<_>>())
    }

    /// Herald ÷ raw of each round (the two were measured back to back).
    pub fn ratios(&self) -> Vec<f64> {
        self.raw.iter().zip(&self.herald).map(|(r, h)| h.rate / r.rate).collect()
    }

    /// The median of the per-round ratios: the figure to compare across runs.
    pub fn ratio(&self) -> f64 {
        median(&self.ratios())
    }

    /// `0.93× (0.88–1.02)`: the median ratio and the range over rounds.
    pub fn ratio_text(&self) -> String {
        let r = self.ratios();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if r.len() > 1 {
            format!("{:.2}× ({lo:.2}–{hi:.2})", self.ratio())
        } else {
            format!("{:.2}×", self.ratio())
        }
    }

    fn merged(samples: &[Sample]) -> Option<Histogram<u64>> {
        let mut all = histogram().ok()?;
        for s in samples {
            all.add(&s.latency).ok()?;
        }
        (!all.is_empty()).then_some(all)
    }

    /// Herald's latencies, all rounds together.
    pub fn herald_latency(&self) -> Option<Histogram<u64>> {
        Self::merged(&self.herald)
    }

    /// The raw client's latencies, all rounds together.
    pub fn raw_latency(&self) -> Option<Histogram<u64>> {
        Self::merged(&self.raw)
    }
}

/// Runs `rounds` rounds of `raw` then `herald` (each given the round number, to name its
/// streams or tables uniquely), interleaved so both see the same neighbours; a failed round
/// fails the comparison.
pub async fn compare<R, RF, H, HF>(rounds: usize, mut raw: R, mut herald: H) -> anyhow::Result<Comparison>
where
    R: FnMut(usize) -> RF,
    RF: Future<Output = anyhow::Result<Sample>>,
    H: FnMut(usize) -> HF,
    HF: Future<Output = anyhow::Result<Sample>>,
{
    let mut c = Comparison::default();
    for round in 0..rounds.max(1) {
        c.raw.push(raw(round).await.with_context(|| format!("raw, round {round}"))?);
        c.herald.push(herald(round).await.with_context(|| format!("Herald, round {round}"))?);
        let (r, h) = (&c.raw[round], &c.herald[round]);
        let mut line =
            format!("  round {round}: raw {:.0}/s, Herald {:.0}/s ({:.2}×)", r.rate, h.rate, h.rate / r.rate);
        if !r.latency.is_empty() && !h.latency.is_empty() {
            let p50 = |s: &Sample| ms(s.latency.value_at_quantile(0.5));
            let _ = write!(line, "; p50 raw {} ms, Herald {} ms", p50(r), p50(h));
        }
        if let (Some(rp), Some(hp)) = (r.publishing, h.publishing) {
            let _ = write!(line, "; publishing alone took raw {rp:.2?}, Herald {hp:.2?}");
        }
        eprintln!("{line}");
    }
    Ok(c)
}

/// `p50 / p99` of `h` in milliseconds, e.g. `1.9 / 3.2 ms`.
pub fn p50_p99(h: &Histogram<u64>) -> String {
    format!("{} / {} ms", ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)))
}

/// `p50 / p99 / max` of `h` in milliseconds.
pub fn p50_p99_max(h: &Histogram<u64>) -> String {
    format!("{} / {} / {} ms", ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)), ms(h.max()))
}

/// Microseconds as milliseconds with sensible precision.
pub fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// A rate with its unit, e.g. `12345 msgs/s`.
pub fn rate(r: f64, unit: &str) -> String {
    format!("{r:.0} {unit}")
}

/// A Markdown table, printed to stdout as a whole.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self { header: header.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Adds a row (missing cells are `—`).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.header.len(), "—".to_owned());
        self.rows.push(cells);
    }

    /// The standard comparison row: what, Herald rate, raw rate, ratio (median and range),
    /// Herald p50 / p99, raw p50 / p99, notes.
    pub fn compared(&mut self, what: &str, unit: &str, c: &Comparison, notes: &str) {
        let lat = |h: Option<Histogram<u64>>| h.map_or_else(|| "—".to_owned(), |h| p50_p99(&h));
        self.row([
            what.to_owned(),
            rate(c.herald_rate(), unit),
            rate(c.raw_rate(), unit),
            c.ratio_text(),
            lat(c.herald_latency()),
            lat(c.raw_latency()),
            notes.to_owned(),
        ]);
    }

    /// The rows of a broker bench: the burst beside the minimal raw client, the burst beside a
    /// raw client using Herald's wire format (`same_format`, described by `format_notes`), and
    /// the paced run.
    pub fn broker_rows(
        &mut self,
        (burst, throughput): (&Burst, &Comparison),
        (same_format, format_notes): (&Comparison, &str),
        (pace, paced): (&Pace, &Comparison),
    ) {
        let burst_notes = format!(
            "{} msgs of {} B in publish batches of {}, {} rounds; latency is queueing behind the burst",
            burst.messages,
            burst.payload,
            burst.batch,
            throughput.raw.len()
        );
        self.compared("publish → consume → ack", "msgs/s", throughput, &burst_notes);
        self.compared("publish → consume → ack, raw using Herald's wire format", "msgs/s", same_format, format_notes);
        self.compared(
            &format!("publish → delivery at a steady {} msgs/s", pace.rate),
            "msgs/s",
            paced,
            &format!(
                "{} msgs, {} per publish, {} rounds; latency from the publish call to receipt",
                pace.messages,
                pace.per_tick,
                paced.raw.len()
            ),
        );
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        };
        line(&mut out, &self.header);
        let _ = writeln!(out, "|{}", "---|".repeat(self.header.len()));
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        println!("{}", self.markdown());
    }
}

/// The column headings of [`Table::compared`], with the raw side named.
pub fn compared_header(raw: &str) -> Vec<String> {
    vec![
        "benchmark".to_owned(),
        "Herald".to_owned(),
        format!("{raw} (same run)"),
        "ratio (median, range)".to_owned(),
        "Herald p50 / p99".to_owned(),
        "raw p50 / p99".to_owned(),
        "notes".to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        let s = |r| Sample::rate(r).expect("histogram");
        let c = Comparison { raw: vec![s(100.0), s(200.0), s(100.0)], herald: vec![s(50.0), s(180.0), s(80.0)] };
        assert!((c.ratio() - 0.8).abs() < 1e-9);
        assert_eq!(c.ratio_text(), "0.80× (0.50–0.90)");
    }

    #[test]
    fn stamps_age() {
        let p = stamp(100);
        assert_eq!(p.len(), 100);
        assert!(age_us(&p).is_some_and(|a| a < 1_000_000));
        assert!(age_us(b"short").is_none());
    }

    #[test]
    fn host_ports() {
        assert_eq!(host_port("postgres://postgres@127.0.0.1:5432/test", 5432), "127.0.0.1:5432");
        assert_eq!(host_port("nats://localhost", 4222), "localhost:4222");
        assert_eq!(host_port("redis://127.0.0.1:6379/0", 6379), "127.0.0.1:6379");
    }

    #[test]
    fn tables_are_markdown() {
        let mut t = Table::new(["a", "b"]);
        t.row(["1"]);
        assert_eq!(t.markdown(), "| a | b |\n|---|---|\n| 1 | — |\n");
    }
}
