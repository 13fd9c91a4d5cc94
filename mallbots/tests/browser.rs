//! The admin web app (`/admin`) in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `scripts/ensure-services.sh`).
//!
//! One scenario on the whole mall running in-process: a wrong token is refused and the right one
//! signs in; an order placed by the simulator (the real binary, as a process) appears on the
//! board and changes status there without a reload (the live feed's WebSocket moves it); a
//! poison message's dead letter shows on the live feed and is opened and replayed from the page;
//! the analytics page draws its charts. Without chromedriver or Chromium the test prints a loud `SKIPPED` line and
//! passes, unless `CI` is set (then it fails). On failure a screenshot is saved and its path
//! printed. With `MALLBOTS_BROWSER_SCREENSHOTS=<dir>` a screenshot of every page goes there.

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use fantoccini::{Client, ClientBuilder, Locator};
use herald::Message;
use mallbots::modules::stores::api as stores;
use serde_json::{Value, json};
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";

/// What every wait allows (the slowest step is the first order: stores, catalog and customer
/// set up by the simulator, then the saga).
const PATIENCE: Duration = Duration::from_secs(60);

/// A program on the `PATH`.
fn program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

/// chromedriver and Chromium, or `None` after a loud SKIPPED line (a failure with `CI` set).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let driver = program("chromedriver");
    let chromium = Some(PathBuf::from(CHROMIUM)).filter(|p| p.is_file()).or_else(|| program("chromium"));
    if let (Some(driver), Some(chromium)) = (driver.clone(), chromium.clone()) {
        return Some((driver, chromium));
    }
    let missing = match (driver, chromium) {
        (None, None) => "chromedriver and chromium are",
        (None, _) => "chromedriver is",
        _ => "chromium is",
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing} not installed and CI is set: `bash scripts/ensure-services.sh` installs chromium and chromium-driver"
    );
    eprintln!(
        "SKIPPED: {missing} not installed (Debian's chromium and chromium-driver); install them with `bash scripts/ensure-services.sh`"
    );
    None
}

/// A chromedriver process, in a process group of its own: dropping it ends it and the
/// browsers it started.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start(path: &Path, log: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(log)?;
        let child = tokio::process::Command::new(path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", path.display()))?;
        let driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            ensure!(Instant::now() < deadline, "chromedriver did not listen on port {port} within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(driver)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The whole group: chromedriver and the Chromium processes it started.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

async fn connect(driver: &Driver, chromium: &Path) -> anyhow::Result<Client> {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            "binary": chromium,
        }),
    );
    // chromedriver speaks plain HTTP on the loopback: no TLS (and so no crypto provider to pick).
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await?;
    Ok(client)
}

/// Polls `f` until it gives a value; fails with `what` after `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = f().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` in the page (a function body: `return …`).
async fn js(client: &Client, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
    Ok(client.execute(script, args).await?)
}

/// The text of the first element matching `css`, if there is one and it is shown.
async fn shown_text(client: &Client, css: &str) -> anyhow::Result<Option<String>> {
    let value = js(
        client,
        "const el = document.querySelector(arguments[0]);
         return el && el.offsetParent !== null ? el.textContent : null;",
        vec![json!(css)],
    )
    .await?;
    Ok(value.as_str().map(str::to_owned))
}

/// Waits until a row of the live feed matching `css` is the entry `name` about the poison
/// message (key `p-browser`).
async fn on_the_feed(client: &Client, css: &str, name: &str, what: &str) -> anyhow::Result<()> {
    until(what, PATIENCE, || async {
        let rows = js(
            client,
            "return [...document.querySelectorAll(arguments[0])].map((r) => r.textContent);",
            vec![json!(css)],
        )
        .await?;
        let rows = rows.as_array().cloned().unwrap_or_default();
        Ok(rows.iter().any(|r| r.as_str().is_some_and(|r| r.contains(name) && r.contains("p-browser"))).then_some(()))
    })
    .await
}

async fn click(client: &Client, css: &str) -> anyhow::Result<()> {
    client.find(Locator::Css(css)).await.with_context(|| format!("find {css}"))?.click().await?;
    Ok(())
}

/// Saves a screenshot of the page as `name`.png in `dir`; returns its path.
async fn screenshot(client: &Client, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let png = client.screenshot().await?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png)?;
    Ok(path)
}

/// Set at load: still there at the end means the page was never reloaded.
const MARKER: &str = "return window.__browserTestMarker === 'first-load';";

/// Records every status each order card shows, as the board changes it.
const WATCH_BOARD: &str = r"
    window.__seen = {};
    const record = (el) => {
      const id = el.dataset.orderId;
      const seen = (window.__seen[id] = window.__seen[id] || []);
      if (seen[seen.length - 1] !== el.dataset.status) seen.push(el.dataset.status);
    };
    document.querySelectorAll('.order-card').forEach(record);
    new MutationObserver((mutations) => {
      for (const m of mutations) {
        if (m.type === 'attributes' && m.target.classList.contains('order-card')) record(m.target);
        for (const node of m.addedNodes) {
          if (node.nodeType !== 1) continue;
          if (node.classList.contains('order-card')) record(node);
          node.querySelectorAll('.order-card').forEach(record);
        }
      }
    }).observe(document.querySelector('.board'), {
      subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'],
    });
    return true;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_app_signs_in_shows_orders_live_replays_a_dead_letter_and_draws_charts() {
    let Some((driver_path, chromium)) = browser() else { return };
    let app = support::spawn_running_app().await;
    let base = app.t.base_url().expect("the app listens on a TCP port");
    let dir = app.t.dir.path().to_owned();
    let driver = Driver::start(&driver_path, &dir.join("chromedriver.log")).await.expect("chromedriver starts");
    let client = connect(&driver, &chromium).await.expect("a Chromium session");

    let outcome = scenario(&app, &client, &base).await;
    if let Err(e) = outcome {
        let kept = std::env::temp_dir().join(format!("mallbots-browser-{}", uuid::Uuid::now_v7().simple()));
        let _ = std::fs::create_dir_all(&kept);
        match screenshot(&client, &kept, "failure").await {
            Ok(path) => eprintln!("browser test failed: screenshot at {}", path.display()),
            Err(s) => eprintln!("browser test failed, and so did its screenshot: {s:#}"),
        }
        if let Ok(Value::String(text)) =
            js(&client, "return location.href + '\\n' + document.body.innerText;", vec![]).await
        {
            eprintln!("the page then:\n{text}");
        }
        let _ = std::fs::copy(dir.join("chromedriver.log"), kept.join("chromedriver.log"));
        let _ = client.close().await;
        drop(driver);
        panic!("{e:#} (screenshot and chromedriver's log in {})", kept.display());
    }
    client.close().await.expect("the browser closes");
    drop(driver);
    app.stop().await;
}

async fn scenario(app: &support::RunningApp, client: &Client, base: &str) -> anyhow::Result<()> {
    let shots = std::env::var_os("MALLBOTS_BROWSER_SCREENSHOTS").map(PathBuf::from);
    let t = &app.t;

    // Sign in: a wrong token first.
    client.goto(&format!("{base}/admin")).await?;
    until("the sign-in form shows", PATIENCE, || shown_text(client, "#sign-in")).await?;
    js(client, "window.__browserTestMarker = 'first-load'; return true;", vec![]).await?;
    if let Some(dir) = &shots {
        screenshot(client, dir, "0-sign-in").await?;
    }
    let token = client.find(Locator::Css("#token")).await?;
    token.send_keys("not-the-token").await?;
    click(client, "#sign-in").await?;
    let refused = until("a wrong token is refused", PATIENCE, || async {
        Ok(shown_text(client, "#sign-in-error").await?.filter(|t| !t.is_empty()))
    })
    .await?;
    ensure!(refused.to_lowercase().contains("wrong token"), "the error says so: {refused:?}");
    ensure!(shown_text(client, "#app").await?.is_none(), "a wrong token does not open the app");

    token.clear().await?;
    token.send_keys(support::TOKEN).await?;
    click(client, "#sign-in").await?;
    until("the board shows", PATIENCE, || async {
        Ok(shown_text(client, "[data-column=\"pending\"]").await?.map(|_| ()))
    })
    .await?;
    until("the live feed is connected", PATIENCE, || async {
        Ok(shown_text(client, "#live-status").await?.filter(|s| s == "live"))
    })
    .await?;
    js(client, WATCH_BOARD, vec![]).await?;

    // The simulator places orders, as a process of its own against the app's HTTP port.
    let report = t.dir.path().join("simulate-report.json");
    let mut simulator = tokio::process::Command::new(env!("CARGO_BIN_EXE_mallbots"))
        .args(["simulate", "--target", base, "--admin-token", support::TOKEN, "--kiosks", "1", "--admins", "1"])
        .args(["--duration", "4", "--drain", "30", "--quiet", "--report"])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the simulator")?;

    let first = until("an order card appears on the board", PATIENCE, || async {
        let id = js(client, "const c = document.querySelector('.order-card'); return c && c.dataset.orderId;", vec![])
            .await?;
        Ok(id.as_str().map(str::to_owned))
    })
    .await?;
    let moved = until("the order's card changes status on the board", PATIENCE, || async {
        let seen = js(
            client,
            "const seen = (window.__seen || {})[arguments[0]] || [];
             const card = document.querySelector(`.order-card[data-order-id=\"${arguments[0]}\"]`);
             const column = card && card.closest('[data-column]');
             return { seen, status: card && card.dataset.status, column: column && column.dataset.column };",
            vec![json!(first)],
        )
        .await?;
        let statuses: Vec<String> = serde_json::from_value(seen["seen"].clone()).unwrap_or_default();
        let status = seen["status"].as_str().map(str::to_owned);
        Ok((statuses.len() >= 2 && status.as_deref() != statuses.first().map(String::as_str)).then_some((
            statuses,
            status,
            seen["column"].as_str().map(str::to_owned),
        )))
    })
    .await?;
    let (statuses, status, column) = moved;
    ensure!(status == column, "the card sits in its status' column: {status:?} in {column:?}");
    ensure!(
        statuses
            .iter()
            .all(|s| ["pending", "approved", "ready", "completed", "rejected", "canceled"].contains(&s.as_str())),
        "known statuses: {statuses:?}"
    );
    ensure!(js(client, MARKER, vec![]).await? == json!(true), "the board changed without a reload");
    eprintln!("order {first} on the board: {}", statuses.join(" → "));
    if let Some(dir) = &shots {
        screenshot(client, dir, "1-board").await?;
    }

    // The simulator ends by itself, every order final.
    let run =
        tokio::time::timeout(Duration::from_secs(120), simulator.wait()).await.context("the simulator ends")??;
    if !run.success() {
        let mut out = String::new();
        if let Some(mut stderr) = simulator.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = stderr.read_to_string(&mut out).await;
        }
        bail!("the simulator failed ({run}): {out}");
    }

    // A dead letter: a product event whose payload is not the event.
    let poison =
        Message::new(stores::PRODUCT_TOPIC, "storesapi.ProductAdded.v1", b"not json".to_vec()).with_key("p-browser");
    app.broker.publish(std::slice::from_ref(&poison)).await?;
    let letter = until("the poison message is dead-lettered", PATIENCE, || async {
        let reply = t.request(axum::http::Method::GET, "/api/admin/dead-letters", true, None, &[]).await;
        let letters = reply.body.as_array().cloned().unwrap_or_default();
        Ok(letters
            .into_iter()
            .find(|l| l["message"]["id"] == poison.id.to_string().as_str())
            .and_then(|l| l["id"].as_str().map(str::to_owned)))
    })
    .await?;
    // It is on the live feed (marked as a dead letter), and the menu counts it.
    click(client, "a[data-route=\"feed\"]").await?;
    on_the_feed(client, ".feed-row.dead-letter", "admin.DeadLetterArchived", "the dead letter is on the live feed")
        .await?;
    until("the menu counts the dead letter", PATIENCE, || async {
        Ok(shown_text(client, "#dead-letter-badge")
            .await?
            .filter(|n| n.parse::<u32>().is_ok_and(|n| n >= 1))
            .map(|_| ()))
    })
    .await?;
    click(client, "a[data-route=\"dead-letters\"]").await?;
    let row = format!(".dead-letter-row[data-id=\"{letter}\"]");
    until("the dead letter is listed", PATIENCE, || async { Ok(shown_text(client, &row).await?.map(|_| ())) }).await?;
    click(client, &row).await?;
    let replay = format!("#dead-letter-detail[data-id=\"{letter}\"] button.replay");
    until("the dead letter opens", PATIENCE, || async {
        let enabled = js(
            client,
            "const b = document.querySelector(arguments[0]); return !!b && !b.disabled;",
            vec![json!(replay)],
        )
        .await?;
        Ok((enabled == json!(true)).then_some(()))
    })
    .await?;
    let payload = shown_text(client, "#dead-letter-detail pre.json").await?.unwrap_or_default();
    ensure!(payload.contains("not json"), "the payload shows: {payload:?}");
    if let Some(dir) = &shots {
        screenshot(client, dir, "2-dead-letter").await?;
    }
    click(client, &replay).await?;
    let confirmation = until("the replay is confirmed", PATIENCE, || async {
        Ok(shown_text(client, "#dead-letter-result").await?.filter(|t| !t.is_empty()))
    })
    .await?;
    ensure!(confirmation.contains("replayed"), "the confirmation says replayed: {confirmation:?}");
    until("the dead letter's status is replayed on the page", PATIENCE, || async {
        let status = js(
            client,
            "const d = document.querySelector('#dead-letter-detail');
             return d && d.dataset.id === arguments[0] ? d.dataset.status : null;",
            vec![json!(letter)],
        )
        .await?;
        Ok((status == json!("replayed")).then_some(()))
    })
    .await?;
    let stored =
        t.request(axum::http::Method::GET, &format!("/api/admin/dead-letters/{letter}"), true, None, &[]).await;
    ensure!(stored.body["status"] == "replayed", "the server has it replayed: {:?}", stored.body);
    click(client, "a[data-route=\"feed\"]").await?;
    on_the_feed(client, ".feed-row", "admin.DeadLetterReplayed", "its replay is on the live feed").await?;

    // Analytics: the charts are drawn.
    click(client, "a[data-route=\"analytics\"]").await?;
    let bars = until("the orders-by-status chart has bars", PATIENCE, || async {
        let bars = js(
            client,
            "const bars = [...document.querySelectorAll('svg[data-chart=\"orders-by-status\"] rect.bar')];
             return { count: bars.length, total: bars.reduce((n, b) => n + Number(b.dataset.value || 0), 0) };",
            vec![],
        )
        .await?;
        let count = bars["count"].as_u64().unwrap_or(0);
        Ok((count > 0 && bars["total"].as_f64().unwrap_or(0.0) > 0.0).then_some(count))
    })
    .await?;
    ensure!(bars >= 1, "bars drawn: {bars}");
    let lines =
        js(client, "return document.querySelectorAll('svg[data-chart=\"revenue\"] path.line').length;", vec![]).await?;
    ensure!(lines.as_u64().unwrap_or(0) >= 1, "the revenue chart has its line: {lines}");
    if let Some(dir) = &shots {
        screenshot(client, dir, "3-analytics").await?;
        for (route, name) in [
            ("feed", "4-feed"),
            ("orders", "5-orders"),
            ("depot", "6-depot"),
            ("invoices", "7-invoices"),
            ("stores", "8-stores"),
            ("board", "9-board"),
        ] {
            click(client, &format!("a[data-route=\"{route}\"]")).await?;
            // Each page loads its data; a settled page has no "Loading…" left.
            until("the page loads", PATIENCE, || async {
                let loading =
                    js(client, "return document.querySelector('#view').innerText.includes('Loading');", vec![]).await?;
                Ok((loading == json!(false)).then_some(()))
            })
            .await?;
            screenshot(client, dir, name).await?;
        }
        if let Some(row) = client.find_all(Locator::Css(".order-row")).await?.first() {
            row.click().await?;
            until("an order's page loads", PATIENCE, || async {
                Ok(shown_text(client, ".detail .panel").await?.map(|_| ()))
            })
            .await?;
            screenshot(client, dir, "10-order").await?;
        }
    }
    ensure!(js(client, MARKER, vec![]).await? == json!(true), "the page was never reloaded");
    Ok(())
}
