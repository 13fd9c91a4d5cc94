//! `mallbots dead-letters …` and `mallbots projections …`: operating a running MallBots from
//! the command line, over the same admin REST API the web app uses (through the gateway or
//! any process running the module concerned).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::simulate::client::{Answer, Client};

/// Where the server is and who we are.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port` (the gateway, or a process).
    pub url: String,
    /// The admin bearer token.
    pub admin_token: String,
}

/// A dead-letter command.
#[derive(Clone, Debug)]
pub enum DeadLetters {
    /// Lists them (pending by default), oldest first.
    List { status: String, group: Option<String>, limit: usize },
    /// One, in full (its message's payload included).
    Show { id: String },
    /// Replays one to the group that failed it.
    Replay { id: String },
    /// Discards one (kept, marked discarded).
    Discard { id: String },
}

/// A projection command.
#[derive(Clone, Debug)]
pub enum Projections {
    /// Where each projection stands (position, lag, what it is doing).
    Status,
    /// Rebuilds one from the start of its log.
    Rebuild { name: String },
}

/// The projections MallBots has, with their admin paths.
const PROJECTIONS: &[(&str, &str, &str)] = &[("analytics", "/api/analytics/projection", "/api/analytics/rebuild")];

fn client(target: &Target, timeout: Duration) -> anyhow::Result<Client> {
    Client::new(&target.url, Some(&target.admin_token), timeout)
}

/// What the server said, or an error naming what went wrong.
async fn call(client: &Client, method: Method, path: &str) -> anyhow::Result<Value> {
    let answer: Answer = client
        .send(method.clone(), path, None, true)
        .await
        .with_context(|| format!("{method} {}{path}", client.base()))?;
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if answer.status == StatusCode::OK {
        return Ok(body);
    }
    let message = body["message"].as_str().unwrap_or("no message").to_owned();
    match answer.status {
        StatusCode::UNAUTHORIZED => bail!("the server refused the admin token (HTTP 401)"),
        StatusCode::NOT_FOUND => bail!("not found: {message} (HTTP 404)"),
        status => bail!("{message} (HTTP {})", status.as_u16()),
    }
}

/// Runs a dead-letter command; returns what to print.
pub async fn dead_letters(target: &Target, command: DeadLetters, json: bool) -> anyhow::Result<String> {
    let client = client(target, Duration::from_secs(30))?;
    let (value, table) = match command {
        DeadLetters::List { status, group, limit } => {
            let mut path = format!("/api/admin/dead-letters?status={status}&limit={limit}");
            if let Some(group) = group {
                path.push_str(&format!("&group={group}"));
            }
            let list = call(&client, Method::GET, &path).await?;
            let table = letters_table(&list);
            (list, Some(table))
        }
        DeadLetters::Show { id } => (call(&client, Method::GET, &format!("/api/admin/dead-letters/{id}")).await?, None),
        DeadLetters::Replay { id } => {
            let replayed = call(&client, Method::POST, &format!("/api/admin/dead-letters/{id}/replay")).await?;
            let text = format!("replayed {id} as {}", replayed["replayId"].as_str().unwrap_or("?"));
            (replayed, Some(text))
        }
        DeadLetters::Discard { id } => {
            let discarded = call(&client, Method::POST, &format!("/api/admin/dead-letters/{id}/discard")).await?;
            (discarded, Some(format!("discarded {id}")))
        }
    };
    Ok(match table {
        Some(table) if !json => table,
        _ => serde_json::to_string_pretty(&value).unwrap_or_default(),
    })
}

fn letters_table(list: &Value) -> String {
    let letters = list.as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        return "no dead letters".to_owned();
    }
    let mut out =
        format!("{:<36}  {:<9}  {:<24}  {:>8}  {:<28}  reason\n", "id", "status", "group", "attempts", "topic");
    for l in &letters {
        let reason: String = l["reason"].as_str().unwrap_or_default().chars().take(80).collect();
        out.push_str(&format!(
            "{:<36}  {:<9}  {:<24}  {:>8}  {:<28}  {}\n",
            l["id"].as_str().unwrap_or_default(),
            l["status"].as_str().unwrap_or_default(),
            l["group"].as_str().unwrap_or_default(),
            l["attempts"].as_u64().unwrap_or_default(),
            l["message"]["topic"].as_str().unwrap_or_default(),
            reason.replace('\n', " "),
        ));
    }
    out.push_str(&format!("{} dead letter(s)", letters.len()));
    out
}

/// Runs a projection command; returns what to print. A rebuild can take long: no timeout
/// beyond an hour.
pub async fn projections(target: &Target, command: Projections, json: bool) -> anyhow::Result<String> {
    let client = client(target, Duration::from_secs(3600))?;
    match command {
        Projections::Status => {
            let mut all = Vec::new();
            for (name, status_path, _) in PROJECTIONS {
                all.push((name, call(&client, Method::GET, status_path).await?));
            }
            if json {
                let map: serde_json::Map<String, Value> = all.into_iter().map(|(n, v)| ((*n).to_owned(), v)).collect();
                return Ok(serde_json::to_string_pretty(&map).unwrap_or_default());
            }
            let mut out = format!(
                "{:<12}  {:<14}  {:>10}  {:>10}  {:>8}  {:>9}\n",
                "module", "projection", "position", "head", "behind", "seconds"
            );
            for (module, s) in all {
                out.push_str(&format!(
                    "{:<12}  {:<14}  {:>10}  {:>10}  {:>8}  {:>9.1}  {}\n",
                    module,
                    s["name"].as_str().unwrap_or_default(),
                    s["position"].as_u64().unwrap_or_default(),
                    s["head"].as_u64().unwrap_or_default(),
                    s["eventsBehind"].as_u64().unwrap_or_default(),
                    s["secondsBehind"].as_f64().unwrap_or_default(),
                    s["phase"].as_str().unwrap_or_default(),
                ));
            }
            Ok(out.trim_end().to_owned())
        }
        Projections::Rebuild { name } => {
            let Some((_, status_path, rebuild)) = PROJECTIONS.iter().find(|(n, _, _)| *n == name) else {
                let known: Vec<_> = PROJECTIONS.iter().map(|(n, _, _)| *n).collect();
                bail!("unknown projection {name:?}: {}", known.join(", "));
            };
            let rebuilding = call(&client, Method::POST, rebuild);
            let report = if std::io::stderr().is_terminal() {
                // Progress on a terminal, from the projection's status, while the rebuild runs.
                let status = self::client(target, Duration::from_secs(5))?;
                tokio::pin!(rebuilding);
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_secs(1),
                    Duration::from_secs(1),
                );
                let report = loop {
                    tokio::select! {
                        report = &mut rebuilding => break report,
                        _ = tick.tick() => {
                            if let Ok(s) = call(&status, Method::GET, status_path).await {
                                eprint!("\r\x1b[K{}", progress_line(&name, &s));
                            }
                        }
                    }
                };
                eprint!("\r\x1b[K");
                report?
            } else {
                rebuilding.await?
            };
            if json {
                return Ok(serde_json::to_string_pretty(&report).unwrap_or_default());
            }
            Ok(format!(
                "{name}: {} events replayed up to position {} in {} ms{}",
                report["events"],
                report["position"],
                report["elapsedMs"],
                if report["completed"] == true { "" } else { " (interrupted: the next start resumes it)" }
            ))
        }
    }
}

/// One line of a rebuild's progress, from the projection's status.
fn progress_line(name: &str, status: &Value) -> String {
    let (position, head) = (status["position"].as_u64().unwrap_or(0), status["head"].as_u64().unwrap_or(0));
    let phase = status["phase"].as_str().unwrap_or("?");
    match (position * 100).checked_div(head) {
        Some(percent) => format!("{name}: {phase}, {position} of {head} events ({percent} %)"),
        None => format!("{name}: {phase}, {position} events"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_says_how_far_a_rebuild_has_come() {
        let status = serde_json::json!({ "phase": "rebuilding", "position": 250, "head": 1000 });
        assert_eq!(progress_line("analytics", &status), "analytics: rebuilding, 250 of 1000 events (25 %)");
        let empty = serde_json::json!({ "phase": "rebuilding", "position": 0, "head": 0 });
        assert_eq!(progress_line("analytics", &empty), "analytics: rebuilding, 0 events");
    }
}
