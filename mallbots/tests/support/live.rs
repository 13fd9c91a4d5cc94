//! A client of the admin's live feed (`/api/admin/live`, WebSocket) for tests.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as Frame;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the feed at `base` (`http://host:port`) with the admin token, resuming `after`: past
/// the welcome.
pub async fn connect(base: &str, token: &str, after: Option<u64>) -> Socket {
    let mut socket = hello(base, token, after).await;
    let welcome = next(&mut socket).await.expect("an answer to the hello");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    socket
}

/// Opens the feed at `base` (`http://host:port`) and says hello with `token` and `after`.
pub async fn hello(base: &str, token: &str, after: Option<u64>) -> Socket {
    let url = format!("{}/api/admin/live", base.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the WebSocket opens");
    let hello = serde_json::json!({ "token": token, "after": after });
    socket.send(Frame::text(hello.to_string())).await.expect("hello");
    socket
}

/// The next JSON frame; `None` once closed (pings are answered by the client library).
pub async fn next(socket: &mut Socket) -> Option<Value> {
    let wait = std::time::Duration::from_secs(30);
    loop {
        match tokio::time::timeout(wait, socket.next()).await.expect("a frame within 30 s") {
            Some(Ok(Frame::Text(text))) => return Some(serde_json::from_str(&text).expect("JSON")),
            Some(Ok(Frame::Close(_))) | None => return None,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the feed failed: {e}"),
        }
    }
}

/// The events until one named `name` with key `key` (that one included).
pub async fn until(socket: &mut Socket, name: &str, key: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let event = next(socket).await.unwrap_or_else(|| panic!("closed before {name} {key}: {seen:?}"));
        assert_eq!(event["type"], "event", "{event}");
        let done = event["name"] == name && event["key"] == key;
        seen.push(event);
        if done {
            return seen;
        }
    }
}
