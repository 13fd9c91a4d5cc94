//! One member of a partitioned consumer group, as its own process: the conformance test
//! `processes` spawns two of these and SIGKILLs one (see `tests/processes/mod.rs`).
//!
//! ```text
//! partitioned_consumer <url> <prefix> <topic> <group> <output file> [claim_ttl_ms] [partitions]
//! ```
//!
//! Connects to NATS at `url` (comma-separated servers allowed) in partitioned mode with stream
//! prefix `<prefix>-` and subject prefix `<prefix>.` (memory storage), subscribes `group` to
//! `topic`, then creates `output file` (its existence means "subscribed") and, for every
//! delivery, appends one line `<unix time in ns> <key> <payload> <message id>` (written with a
//! single `write` call, before the ack) and acks. It runs until it is killed.

use std::error::Error;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::pubsub::{SubscribeOptions, Subscriber};
use herald_nats::{NatsConfig, Storage};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, prefix, topic, group, output, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: partitioned_consumer <url> <prefix> <topic> <group> <output file> [claim_ttl_ms] [partitions]"
                .into(),
        );
    };
    let claim_ttl_ms: u64 = rest.first().map_or(Ok(2_000), |s| s.parse())?;
    let partitions: u32 = rest.get(1).map_or(Ok(8), |s| s.parse())?;
    let config = NatsConfig::new(url.as_str())
        .stream_prefix(format!("{prefix}-"))
        .subject_prefix(format!("{prefix}."))
        .storage(Storage::Memory)
        .max_age(Duration::from_secs(600))
        .partitions(partitions)
        .claim_ttl(Duration::from_millis(claim_ttl_ms));
    let broker = config.connect().await?;
    let mut subscription = broker
        .subscribe(SubscribeOptions::new(topic.as_str(), group.as_str()).ack_wait(Duration::from_secs(3)))
        .await?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(output)?;
    while let Some(delivery) = subscription.next().await {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let message = &delivery.message;
        let line = format!("{nanos} {} {} {}\n", message.key, String::from_utf8_lossy(&message.payload), message.id);
        file.write_all(line.as_bytes())?;
        file.flush()?;
        if let Err(e) = delivery.ack().await {
            eprintln!("ack failed (the message comes again): {e}");
        }
    }
    Ok(())
}
