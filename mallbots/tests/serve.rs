//! The real thing: `App::run` on a socket (port 0), with the message router and the outbox
//! relay running, and a clean shutdown.

mod support;

use std::time::Duration;

use herald::command::{Outcome, REPLY_REASON, expect_reply};
use herald::{EventSet, Message, StartFrom, SubscribeOptions};
use mallbots::app::{App, Config};
use mallbots::modules::{customers, stores};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One HTTP/1.1 request over a fresh connection; returns the status and the JSON body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8(response).expect("utf-8");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn serve_answers_http_publishes_events_and_authorizes_customers_until_shut_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        http_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        database: format!("sqlite://{}", dir.path().join("mallbots.db").display()),
        admin_token: None,
        ..Config::default()
    };
    let app = App::build(config).await.expect("app builds");
    let token = app.admin_token().to_owned();
    let stored = std::fs::read_to_string(dir.path().join(mallbots::app::ADMIN_TOKEN_FILE)).expect("token kept");
    assert_eq!(stored, token, "a generated token is kept next to the database");
    let (addr, grpc, broker) = (app.local_addr(), app.grpc_addr(), app.broker());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));

    assert_eq!(http(addr, "GET", "/healthz", None, None).await.0, 200);
    let (status, created) =
        http(addr, "POST", "/api/stores", Some(&token), Some(json!({ "name": "Books", "location": "L1" }))).await;
    assert_eq!(status, 201, "{created}");
    let store_id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(http(addr, "POST", "/api/stores", None, Some(json!({ "name": "B", "location": "L" }))).await.0, 401);

    // The integration event went through the outbox to the broker.
    let mut store_events = broker
        .subscribe(SubscribeOptions::new(stores::api::STORE_TOPIC, "test-observer").start(StartFrom::Beginning))
        .await
        .expect("subscribe");
    let delivery =
        tokio::time::timeout(Duration::from_secs(10), store_events.next()).await.expect("in time").expect("a message");
    let event =
        stores::api::StoreIntegrationEvent::decode(&delivery.message.name, &delivery.message.payload).expect("decodes");
    assert_eq!(
        event,
        stores::api::StoreCreated { id: store_id.clone(), name: "Books".into(), location: "L1".into() }.into()
    );
    assert_eq!(delivery.message.key, store_id);
    delivery.ack().await.expect("ack");

    // AuthorizeCustomer, as the saga will send it: success for an enabled customer, failure
    // with the reason for a disabled or unknown one.
    let (_, ada) =
        http(addr, "POST", "/api/customers", None, Some(json!({ "name": "Ada", "smsNumber": "555 0100" }))).await;
    let ada = ada["id"].as_str().expect("id").to_owned();
    let (_, bob) =
        http(addr, "POST", "/api/customers", None, Some(json!({ "name": "Bob", "smsNumber": "555 0101" }))).await;
    let bob = bob["id"].as_str().expect("id").to_owned();
    assert_eq!(http(addr, "PUT", &format!("/api/customers/{bob}/disable"), Some(&token), None).await.0, 204);

    let mut replies = broker
        .subscribe(SubscribeOptions::new("test.replies", "test").start(StartFrom::Beginning))
        .await
        .expect("subscribe");
    for id in [&ada, &bob, &"nobody".to_owned()] {
        let command =
            Message::encode(customers::api::COMMAND_TOPIC, &customers::api::AuthorizeCustomer { id: id.clone() })
                .expect("encode")
                .with_key(id.as_str())
                .with_header("herald-saga-id", id.as_str());
        broker.publish(&[expect_reply(command, "test.replies")]).await.expect("publish");
    }
    let mut outcomes = std::collections::HashMap::new();
    for _ in 0..3 {
        let reply =
            tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("in time").expect("a reply");
        let saga = reply.message.header("herald-saga-id").expect("saga header copied").to_owned();
        outcomes.insert(saga, (Outcome::of(&reply.message), reply.message.header(REPLY_REASON).map(str::to_owned)));
        reply.ack().await.expect("ack");
    }
    assert_eq!(outcomes[&ada], (Some(Outcome::Success), None));
    assert_eq!(outcomes[&bob], (Some(Outcome::Failure), Some("the customer is disabled".into())));
    assert_eq!(outcomes["nobody"], (Some(Outcome::Failure), Some("customer not found".into())));

    // Streams open at shutdown (a shopper bot, a browser on the live feed) do not hold it up.
    let bot = mallbots::bot::BotConfig {
        id: "bot-1".into(),
        url: format!("http://{grpc}"),
        token: token.clone(),
        pick: Duration::from_millis(10),
    };
    let stats = std::sync::Arc::new(mallbots::bot::BotStats::default());
    let bot_stop = CancellationToken::new();
    let bot_task = tokio::spawn(mallbots::bot::run(bot, stats.clone(), bot_stop.clone()));
    support::eventually("the bot is connected", || async {
        stats.connections.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;
    let _feed = support::live::connect(&format!("http://{addr}"), &token, None).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("stops in time")
        .expect("no panic")
        .expect("clean stop");
    bot_stop.cancel();
    bot_task.await.expect("the bot stops");
}

/// `mallbots simulate`'s entry point, briefly, on its own embedded server (the real binary):
/// orders are placed, approved and completed, without a failed request — with the admins
/// completing the shopping lists over REST, and with shopper bots on the gRPC stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_drives_orders_to_completed_on_an_embedded_server() {
    use mallbots::simulate::{self, Progress, Target, server::ServerConfig};
    for bots in [0, 2] {
        let config = simulate::Config {
            kiosks: 2,
            admins: 1,
            bots,
            duration: Duration::from_secs(3),
            // Ends as soon as every order is final; long only for a slow machine.
            drain: Duration::from_secs(60),
            target: Target::Embedded(ServerConfig {
                exe: env!("CARGO_BIN_EXE_mallbots").into(),
                database: None,
                broker: None,
                namespace: None,
            }),
            request_timeout: Duration::from_secs(30),
            progress: Progress::Quiet,
            ..simulate::Config::default()
        };
        let report = simulate::run(config, CancellationToken::new()).await.expect("the simulation runs");
        assert!(report.orders.placed >= 1, "{report}");
        assert!(report.orders.approved >= 1, "{report}");
        assert!(report.final_status.completed >= 1, "{report}");
        assert_eq!(report.errors.total, 0, "{report}");
        let s = &report.final_status;
        assert_eq!(s.completed + s.approved + s.rejected + s.other + s.timeout, report.orders.placed, "{report}");
        assert_eq!(report.checkout_to_completed_ms.count, report.orders.completed, "{report}");
        match &report.bots {
            Some(b) => assert_eq!(b.lists_completed, s.completed, "the bots completed every list: {report}"),
            None => assert_eq!(bots, 0, "{report}"),
        }
        if cfg!(target_os = "linux") {
            let server = report.server.as_ref().expect("the embedded server is measured on Linux");
            assert!(server.cpu_seconds > 0.0 && server.rss_kib.max > 0, "{report}");
        }

        // The JSON report and, beside it, the HTML page with its three charts.
        let dir = tempfile::tempdir().expect("temp dir");
        let json_path = dir.path().join("report.json");
        let html_path = report.write(&json_path).expect("the report is written");
        assert_eq!(html_path, dir.path().join("report.html"));
        let html = std::fs::read_to_string(&html_path).expect("the HTML report exists");
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
        assert_eq!(html.matches("<svg").count(), 3, "orders/s, latency, final status");
        assert!(html.contains("<polyline") && !html.contains("NaN"), "{html}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON report exists")).expect("JSON");
        assert_eq!(json["orders"]["placed"], report.orders.placed, "the existing fields stay");
        let intervals = json["timeline"]["intervals"].as_array().expect("the time series");
        assert_eq!(json["timeline"]["interval_seconds"], 1.0);
        assert!((3..=70).contains(&intervals.len()), "a 3 s run and its drain, per second: {intervals:?}");
        let total = |field: &str| intervals.iter().map(|i| i[field].as_u64().expect("a count")).sum::<u64>();
        assert_eq!(total("placed"), report.orders.placed, "{intervals:?}");
        assert_eq!(total("approved"), report.orders.approved, "{intervals:?}");
        assert_eq!(total("completed"), report.orders.completed, "{intervals:?}");
        assert!(intervals.iter().any(|i| i["approved_p95_ms"].as_f64().is_some_and(|ms| ms > 0.0)), "{intervals:?}");
    }
}

/// Start-up against a server that cannot be reached fails within 10 s, names what it could not
/// reach, and never prints the password of the URL — for each kind of URL: a closed port
/// (refused at once) and a silent server (accepts, never answers: the connect timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_against_unreachable_servers_fails_fast_naming_them_without_passwords() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port() // dropped: nothing listens there any more
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream); // accepted, never answered
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("m.db").display());
    let cases = [
        ("PostgreSQL", format!("postgres://bob:hunter2@127.0.0.1:{closed}/mall"), None),
        ("PostgreSQL", format!("postgres://bob:hunter2@127.0.0.1:{silent_port}/mall"), None),
        ("broker", sqlite.clone(), Some(format!("nats://bob:hunter2@127.0.0.1:{closed}"))),
        ("broker", sqlite.clone(), Some(format!("redis://bob:hunter2@127.0.0.1:{closed}"))),
        ("broker", sqlite.clone(), Some(format!("amqp://bob:hunter2@127.0.0.1:{closed}/%2f"))),
        ("broker", sqlite, Some(format!("nats://bob:hunter2@127.0.0.1:{silent_port}"))),
    ];
    let runs = cases.into_iter().map(|(what, database, broker)| async move {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mallbots"));
        command.args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--database",
            &database,
            "--admin-token",
            "t",
        ]);
        if let Some(broker) = &broker {
            command.args(["--broker", broker]);
        }
        let started = std::time::Instant::now();
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .unwrap_or_else(|_| panic!("{database} {broker:?}: still running after 20 s"))
            .expect("runs");
        let elapsed = started.elapsed();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success(), "{database} {broker:?}: started?\n{text}");
        assert!(elapsed < Duration::from_secs(10), "{database} {broker:?}: failed after {elapsed:?}\n{text}");
        assert!(!text.contains("hunter2"), "{database} {broker:?}: the password is printed\n{text}");
        let target = broker.as_deref().unwrap_or(&database);
        let host = target.rsplit_once('@').map(|(_, host)| host.trim_end_matches("/%2f").trim_end_matches("/mall"));
        assert!(
            text.contains(what) && host.is_some_and(|h| text.contains(h)),
            "{database} {broker:?}: the error names neither {what} nor the address\n{text}"
        );
    });
    futures::future::join_all(runs).await;
    held.abort();
}

/// `mallbots dead-letters …` and `mallbots projections …` against a running server (the real
/// binary over its admin API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_commands_list_replay_and_discard_dead_letters_and_show_projections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        http_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        database: format!("sqlite://{}", dir.path().join("mallbots.db").display()),
        admin_token: Some("ops-token".into()),
        ..Config::default()
    };
    let app = App::build(config).await.expect("app builds");
    let (url, broker) = (format!("http://{}", app.local_addr()), app.broker());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    let mallbots = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mallbots"));
        command.args(args).args(["--url", &url, "--admin-token", "ops-token"]);
        async move {
            let out = tokio::process::Command::from(command).output().await.expect("runs");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        }
    };
    assert_eq!(mallbots(&["dead-letters", "list"]).await, (true, "no dead letters\n".to_owned()));

    let poison =
        Message::new(stores::api::PRODUCT_TOPIC, "storesapi.ProductAdded.v1", b"not json".to_vec()).with_key("p");
    broker.publish(std::slice::from_ref(&poison)).await.expect("publish");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (ok, text) = mallbots(&["dead-letters", "list", "--json"]).await;
        assert!(ok, "{text}");
        let list: Value = serde_json::from_str(&text).expect("JSON");
        if let Some(first) = list.as_array().and_then(|l| l.first()) {
            break first.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the poison message was never archived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = listed["id"].as_str().expect("id").to_owned();
    let (ok, table) = mallbots(&["dead-letters", "list"]).await;
    assert!(
        ok && table.contains(&id) && table.contains("baskets-products") && table.contains("1 dead letter"),
        "{table}"
    );
    let (ok, shown) = mallbots(&["dead-letters", "show", &id]).await;
    assert!(ok && shown.contains("not json"), "{shown}");
    let (ok, replayed) = mallbots(&["dead-letters", "replay", &id]).await;
    assert!(ok && replayed.starts_with(&format!("replayed {id} as ")), "{replayed}");
    let (ok, again) = mallbots(&["dead-letters", "replay", &id]).await;
    assert!(!ok && again.contains("HTTP 409"), "a dead letter is replayed once: {again}");
    let (ok, missing) = mallbots(&["dead-letters", "discard", "01a205d2-0000-7000-8000-000000000000"]).await;
    assert!(!ok && missing.contains("HTTP 404"), "{missing}");
    let (ok, wrong) = mallbots(&["dead-letters", "show", "not-an-id"]).await;
    assert!(!ok && wrong.contains("HTTP 400"), "{wrong}");

    let (ok, status) = mallbots(&["projections", "status"]).await;
    assert!(
        ok && status.contains("analytics") && status.contains(mallbots::modules::analytics::PROJECTION),
        "{status}"
    );
    let (ok, rebuilt) = mallbots(&["projections", "rebuild", "analytics"]).await;
    assert!(ok && rebuilt.starts_with("analytics: ") && rebuilt.contains("events replayed"), "{rebuilt}");
    let (ok, unknown) = mallbots(&["projections", "rebuild", "nope"]).await;
    assert!(!ok && unknown.contains("unknown projection"), "{unknown}");
    let mut denied = std::process::Command::new(env!("CARGO_BIN_EXE_mallbots"));
    denied.args(["dead-letters", "list", "--url", &url, "--admin-token", "wrong"]);
    let out = tokio::process::Command::from(denied).output().await.expect("runs");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("refused the admin token"));

    shutdown.cancel();
    running.await.expect("no panic").expect("clean stop");
}
