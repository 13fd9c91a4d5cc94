//! Every unary method of every gRPC service (and the bots' stream), called with requests generated from the services'
//! own descriptor set (the one reflection publishes): fields present or not, strings from the
//! ids of real entities and from values no field accepts (empty, long, not a time, SQL, non-ASCII,
//! invalid UTF-8), numbers at and past their limits (negative, zero, huge, NaN, infinity), nested
//! and repeated fields, and bytes that are not a message at all (cut short, garbage), with and
//! without the admin token. Whatever the request, the answer is a status the caller can act on:
//! never `Internal`, `Unknown`, `DataLoss` or `Unimplemented`, and never a hang. Deterministic
//! (a fixed seed). On SQLite, and on PostgreSQL when its server runs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};
use prost::Message as _;
use prost::bytes::{Buf, BufMut};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Status};

use crate::support::{self, Backend, RunningApp, TOKEN, catalog, order, register};

/// Generated requests per method.
const CASES: usize = 40;

/// The codes a well-behaved server never answers to a client's request.
const NEVER: [Code; 4] = [Code::Internal, Code::Unknown, Code::DataLoss, Code::Unimplemented];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_to_every_method_never_get_internal_on_sqlite() {
    fuzz(support::spawn_running_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_to_every_method_never_get_internal_on_postgres() {
    if let Some(app) = support::spawn_running_app_on(Backend::Postgres).await {
        fuzz(app).await;
    }
}

async fn fuzz(app: RunningApp) {
    // Real entities, so that some requests reach past the lookups.
    let t = &app.t;
    let product = catalog(t).await;
    let customer = register(t, "Ada").await;
    let placed = order(t, &customer, &product, serde_json::json!(19.98)).await;
    let store = t.get(&format!("/api/stores/products/{product}")).await.body["storeId"].as_str().map(str::to_owned);
    let mut ids = vec![product, customer, placed];
    ids.extend(store);

    let schema = Schema::load();
    let channel = super::channel(&app).await;
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut failures = Vec::new();
    let mut calls = 0;
    let mut slowest = Vec::new();
    for method in &schema.methods {
        let started = std::time::Instant::now();
        for case in 0..CASES {
            let body = match case % 10 {
                // Not a message: cut short, or garbage.
                8 => {
                    let mut bytes = schema.generate(&method.input, &ids, &mut rng, 0);
                    bytes.truncate(bytes.len().saturating_sub(1 + pick(&mut rng, 3)));
                    bytes
                }
                9 => (0..pick(&mut rng, 24) + 1).map(|_| rng.next_u32() as u8).collect(),
                _ => schema.generate(&method.input, &ids, &mut rng, 0),
            };
            let with_token = case % 2 == 0;
            calls += 1;
            match call(&channel, &method.path, body.clone(), with_token).await {
                Ok(()) => {}
                Err(status) if !NEVER.contains(&status.code()) => {}
                Err(status) => failures.push(format!(
                    "{} ({}token) {:02x?}: {:?} {}",
                    method.path,
                    if with_token { "" } else { "no " },
                    body,
                    status.code(),
                    status.message()
                )),
            }
        }
        slowest.push((started.elapsed(), method.path.clone()));
    }
    slowest.sort();
    eprintln!("slowest methods ({CASES} calls each): {:?}", slowest.iter().rev().take(5).collect::<Vec<_>>());
    assert!(calls >= schema.methods.len() * CASES, "every method was called");
    assert!(schema.methods.len() >= 30, "the services' unary methods: {}", schema.methods.len());
    if !failures.is_empty() {
        let mut report = format!("{} of {calls} calls answered a code no request deserves:\n", failures.len());
        for f in failures.iter().take(20) {
            let _ = writeln!(report, "  {f}");
        }
        panic!("{report}");
    }
    app.stop().await;
}

/// The bots' stream (`depotpb.ShopperBot/Connect`), fed generated bot messages (hellos with
/// real, wrong and broken fields, picks and completions of lists that are not theirs) and bytes
/// that are not a message: each stream ends with a status the bot can act on, never one of
/// [`NEVER`], and never hangs once the bot stops sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_messages_on_the_bots_stream_never_get_internal() {
    let app = support::spawn_running_app().await;
    let ids = vec![TOKEN.to_owned(), "bot-1".to_owned(), catalog(&app.t).await];
    let schema = Schema::load();
    let channel = super::channel(&app).await;
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut failures = Vec::new();
    for case in 0..CASES {
        let mut messages: Vec<Vec<u8>> =
            (0..=pick(&mut rng, 3)).map(|_| schema.generate(".depotpb.BotMessage", &ids, &mut rng, 0)).collect();
        if case % 3 == 2 {
            messages.push((0..pick(&mut rng, 16) + 1).map(|_| rng.next_u32() as u8).collect());
        }
        let outcome = stream(&channel, "/depotpb.ShopperBot/Connect", messages.clone()).await;
        if let Err(status) = outcome
            && NEVER.contains(&status.code())
        {
            failures.push(format!("{messages:02x?}: {:?} {}", status.code(), status.message()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CASES} streams ended badly: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    app.stop().await;
}

/// A streaming call of `path` sending `messages` (then the end of the stream), read to its end.
async fn stream(channel: &tonic::transport::Channel, path: &str, messages: Vec<Vec<u8>>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(path).expect("a method path");
    let call = async {
        let mut answers =
            grpc.streaming(Request::new(futures::stream::iter(messages)), path, RawCodec).await?.into_inner();
        while answers.message().await?.is_some() {}
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| Err(Status::unknown("the stream did not end within 10 s of the bot's last message")))
}

/// One call of `path` with `body` as the request's bytes.
async fn call(channel: &tonic::transport::Channel, path: &str, body: Vec<u8>, with_token: bool) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(body);
    if with_token {
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("ascii"));
    }
    let path = PathAndQuery::try_from(path).expect("a method path");
    match tokio::time::timeout(Duration::from_secs(10), grpc.unary(request, path.clone(), RawCodec)).await {
        Ok(answer) => answer.map(drop),
        Err(_) => Err(Status::unknown(format!("{path}: no answer within 10 s"))),
    }
}

fn pick(rng: &mut TestRng, n: usize) -> usize {
    rng.next_u32() as usize % n
}

/// A unary method: its path (`/package.Service/Method`) and input type (`.package.Type`).
struct Method {
    path: String,
    input: String,
}

/// The services' methods and message types, from the descriptor set.
struct Schema {
    methods: Vec<Method>,
    types: HashMap<String, DescriptorProto>,
}

impl Schema {
    fn load() -> Self {
        let set = FileDescriptorSet::decode(mallbots::grpc::FILE_DESCRIPTOR_SET).expect("the descriptor set");
        let mut types = HashMap::new();
        let mut methods = Vec::new();
        for file in &set.file {
            let package = file.package();
            fn add(prefix: &str, message: &DescriptorProto, types: &mut HashMap<String, DescriptorProto>) {
                let name = format!("{prefix}.{}", message.name());
                for nested in &message.nested_type {
                    add(&name, nested, types);
                }
                types.insert(name, message.clone());
            }
            for message in &file.message_type {
                add(&format!(".{package}"), message, &mut types);
            }
            for service in &file.service {
                for m in &service.method {
                    if m.client_streaming() || m.server_streaming() {
                        continue; // the bots' stream has tests of its own
                    }
                    let path = format!("/{package}.{}/{}", service.name(), m.name());
                    methods.push(Method { path, input: m.input_type().to_owned() });
                }
            }
        }
        Self { methods, types }
    }

    /// A message of `type_name`, encoded: each field present or not, with values from
    /// [`Self::value`].
    fn generate(&self, type_name: &str, ids: &[String], rng: &mut TestRng, depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(message) = self.types.get(type_name) else { return out };
        for field in &message.field {
            if pick(rng, 10) < 3 {
                continue;
            }
            let count = if field.label() == Label::Repeated { pick(rng, 4) } else { 1 };
            for _ in 0..count {
                self.value(field.number() as u32, field.r#type(), field.type_name(), ids, rng, depth, &mut out);
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn value(
        &self,
        number: u32,
        kind: Type,
        type_name: &str,
        ids: &[String],
        rng: &mut TestRng,
        depth: usize,
        out: &mut Vec<u8>,
    ) {
        const INTS: [i64; 9] = [0, 1, -1, 5, 100, 101, i32::MAX as i64, i32::MIN as i64, i64::MAX];
        const FLOATS: [f64; 8] = [0.0, 1.5, -1.0, 19.98, f64::NAN, f64::INFINITY, 1e300, 0.001];
        let int = INTS[pick(rng, INTS.len())];
        let float = FLOATS[pick(rng, FLOATS.len())];
        match kind {
            Type::String | Type::Bytes => {
                let text = text(ids, rng);
                key(number, 2, out);
                varint(text.len() as u64, out);
                out.extend_from_slice(&text);
            }
            Type::Message => {
                if depth < 3 {
                    let inner = self.generate(type_name, ids, rng, depth + 1);
                    key(number, 2, out);
                    varint(inner.len() as u64, out);
                    out.extend_from_slice(&inner);
                }
            }
            Type::Double => {
                key(number, 1, out);
                out.put_f64_le(float);
            }
            Type::Float => {
                key(number, 5, out);
                out.put_f32_le(float as f32);
            }
            Type::Fixed64 | Type::Sfixed64 => {
                key(number, 1, out);
                out.put_i64_le(int);
            }
            Type::Fixed32 | Type::Sfixed32 => {
                key(number, 5, out);
                out.put_i32_le(int as i32);
            }
            Type::Sint32 | Type::Sint64 => {
                key(number, 0, out);
                varint(((int << 1) ^ (int >> 63)) as u64, out);
            }
            Type::Bool => {
                key(number, 0, out);
                varint(u64::from(rng.next_u32().is_multiple_of(2)), out);
            }
            Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 | Type::Enum => {
                key(number, 0, out);
                varint(if kind == Type::Int32 || kind == Type::Enum { i64::from(int as i32) } else { int } as u64, out);
            }
            Type::Group => {}
        }
    }
}

/// A string field's bytes: a real id, or something no field should take whole.
fn text(ids: &[String], rng: &mut TestRng) -> Vec<u8> {
    let choice = pick(rng, 14);
    let fixed: &[u8] = match choice {
        0..=4 => return ids[pick(rng, ids.len())].clone().into_bytes(),
        5 => b"",
        6 => b" ",
        7 => b"2026-12-05T00:00:00Z",
        8 => b"yesterday",
        9 => b"' OR 1=1 --",
        10 => "Zoë's café ☕ 书店".as_bytes(),
        11 => b"\xff\xfe not UTF-8",
        12 => b"00000000-0000-0000-0000-000000000000",
        _ => return "x".repeat(pick(rng, 5000)).into_bytes(),
    };
    fixed.to_vec()
}

fn key(number: u32, wire_type: u32, out: &mut Vec<u8>) {
    varint(u64::from((number << 3) | wire_type), out);
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Requests and answers as bytes: the fuzz writes the wire format itself.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}
