//! `RedisConfig::max_len` keeps a topic's stream near its bound (`XADD … MAXLEN ~`), and what is
//! kept is the newest entries. Skips loudly without a Redis server, fails under `CI`.

use herald::message::Message;
use herald::pubsub::Publisher;
use herald_redis::RedisConfig;

const URL: &str = "redis://127.0.0.1:6379";

#[tokio::test]
async fn a_stream_is_trimmed_to_about_max_len_keeping_the_newest_entries() {
    if !herald_conformance::support::server_available(("Redis", "127.0.0.1:6379")) {
        return;
    }
    let prefix = format!("ht{:08x}:", fastrand::u32(..));
    let broker = RedisConfig::new(URL).key_prefix(&prefix).max_len(100).connect().await.expect("connect");
    let messages: Vec<Message> =
        (0..2_000u32).map(|i| Message::new("trimmed", "N.v1", i.to_be_bytes().to_vec())).collect();
    for chunk in messages.chunks(100) {
        broker.publish(chunk).await.expect("publish");
    }
    let client = redis::Client::open(URL).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connection");
    let key = broker.stream_key("trimmed");
    let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await.expect("XLEN");
    assert!((100..400).contains(&len), "about 100 entries kept (whole nodes are trimmed), found {len}");
    let newest: Vec<redis::Value> = redis::cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("XREVRANGE");
    assert_eq!(newest.len(), 1, "the newest entry is kept");
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.expect("DEL");
}
