//! No gRPC request may hold the NUL character (U+0000), as no REST request may: PostgreSQL
//! cannot store it in TEXT or JSONB, so a statement holding one fails and the call would answer
//! `Internal`. The check sits in the codec every generated service uses (`build.rs` names
//! [`NulRefusingCodec`]), so it covers every method, every string field, nested messages and
//! repeated and map fields included, before a handler runs: a request with NUL in any string
//! is refused with `InvalidArgument`, naming the field.
//!
//! The codec is prost's; its decoder first walks the request's wire bytes with the schema of
//! the `.proto` files (the descriptor set reflection publishes): a string field whose bytes hold
//! 0x00 refuses the call. Only requests (a method's input type) are checked: the generated
//! clients share the codec, and what they decode is a response. Bytes that are not a valid
//! message are left to prost's decoder; its refusal (tonic's `Internal`) is answered as the
//! caller's error, `InvalidArgument`, with prost's reason (`failed to decode Protobuf message:
//! …`).

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::LazyLock;

use prost::bytes::Buf;
use prost::{Message, Name};
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::error::NUL_REFUSED;

/// prost's codec, with a decoder that refuses a request holding the NUL character in any string
/// field (see the module). Named by `build.rs` as the codec of every service and client.
#[derive(Debug, Clone)]
pub struct NulRefusingCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for NulRefusingCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for NulRefusingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = NulRefusingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        NulRefusingDecoder { inner: ProstDecoder::default(), request: request::<U>() }
    }
}

/// prost's decoder of `U`, checking first, when `U` is a request, that no string holds NUL.
#[derive(Debug)]
pub struct NulRefusingDecoder<U> {
    inner: ProstDecoder<U>,
    /// The schema of `U`; `None` when `U` is not a request (a client decoding a response).
    request: Option<&'static MessageType>,
}

impl<U: Message + Default> Decoder for NulRefusingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message is one contiguous buffer (tonic reads it whole before decoding).
        if let Some(request) = self.request
            && buf.chunk().len() == buf.remaining()
            && let Some(field) = nul_in(request, buf.chunk(), 0)
        {
            return Err(Status::invalid_argument(format!("{field}: {NUL_REFUSED}")));
        }
        // prost's decoder answers bytes that are not the message (invalid UTF-8 in a string,
        // a bad varint, a cut-short field) with `Internal`; that is the caller's error.
        self.inner.decode(buf).map_err(|e| match (self.request, e.code()) {
            (Some(_), tonic::Code::Internal) => Status::invalid_argument(e.message()),
            _ => e,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// What the check needs to know of the `.proto` files.
#[derive(Debug, Default)]
struct Schema {
    /// Every message type, by full name (`storespb.CreateStoreRequest`).
    types: HashMap<String, MessageType>,
    /// The full names of the methods' input types: the messages a server decodes.
    requests: HashSet<String>,
}

/// The schema of `U` if it is a request.
fn request<U: Name>() -> Option<&'static MessageType> {
    let schema: &'static Schema = &SCHEMA;
    let name = U::full_name();
    schema.requests.contains(&name).then(|| schema.types.get(&name)).flatten()
}

/// A message type's string fields and message fields, by field number; other fields are
/// skipped over.
#[derive(Debug, Default)]
struct MessageType {
    fields: HashMap<u64, Field>,
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: FieldKind,
}

#[derive(Debug)]
enum FieldKind {
    /// A `string`.
    Text,
    /// A message (map entries too), by the full name of its type.
    Message(String),
}

/// The schema of every `.proto` file the app serves, read once from the descriptor set
/// reflection publishes.
static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let files = FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap_or_else(|e| {
        // Cannot happen (build.rs wrote it); the database still refuses NUL (see `AppError`).
        tracing::error!(error = %e, "the gRPC descriptor set does not decode: NUL characters are not checked");
        FileDescriptorSet::default()
    });
    let mut types = HashMap::new();
    for file in &files.file {
        for message in &file.message_type {
            collect(file.package(), message, &mut types);
        }
    }
    let requests = files
        .file
        .iter()
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .map(|m| m.input_type().trim_start_matches('.').to_owned())
        .collect();
    Schema { types, requests }
});

/// Adds `message` (in `scope`: a package, or the enclosing message) and its nested types.
fn collect(scope: &str, message: &DescriptorProto, types: &mut HashMap<String, MessageType>) {
    let name = if scope.is_empty() { message.name().to_owned() } else { format!("{scope}.{}", message.name()) };
    let fields = message
        .field
        .iter()
        .filter_map(|f| {
            let kind = match f.r#type() {
                Type::String => FieldKind::Text,
                Type::Message => FieldKind::Message(f.type_name().trim_start_matches('.').to_owned()),
                _ => return None,
            };
            Some((u64::try_from(f.number()).ok()?, Field { name: f.name().to_owned(), kind }))
        })
        .collect();
    for nested in &message.nested_type {
        collect(&name, nested, types);
    }
    types.insert(name, MessageType { fields });
}

/// The deepest nesting walked (prost's own recursion limit).
const MAX_DEPTH: u32 = 100;

/// The path (`filters.customer_id`) of the first string field of `message`, encoded in `bytes`,
/// that holds NUL. `None` when none does, and when the bytes are not a valid message (prost's
/// decoder then says why).
fn nul_in(message: &MessageType, mut bytes: &[u8], depth: u32) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        match key & 0b111 {
            0 => {
                varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..)?,
            5 => bytes = bytes.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let value = bytes.get(..len)?;
                bytes = &bytes[len..];
                match message.fields.get(&(key >> 3)) {
                    Some(Field { name, kind: FieldKind::Text }) if value.contains(&0) => return Some(name.clone()),
                    Some(Field { name, kind: FieldKind::Message(type_name) }) => {
                        if let Some(nested) = SCHEMA.types.get(type_name)
                            && let Some(path) = nul_in(nested, value, depth + 1)
                        {
                            return Some(format!("{name}.{path}"));
                        }
                    }
                    _ => {}
                }
            }
            // Groups (deprecated, unused here) and invalid wire types: left to prost.
            _ => return None,
        }
    }
    None
}

/// Reads a base-128 varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb::searchpb::{Filters, SearchOrdersRequest};
    use crate::grpc::pb::storespb::{CreateStoreRequest, CreateStoreResponse};

    /// Where the check finds NUL in `request`, as the server's decoder would.
    fn nul_of<M: Message + Name>(request: &M) -> Option<String> {
        nul_in(super::request::<M>().expect("a request type"), &request.encode_to_vec(), 0)
    }

    #[test]
    fn a_nul_in_any_string_of_a_request_is_found_and_named() {
        let store = CreateStoreRequest { name: "Bo\0oks".into(), location: "L1".into() };
        assert_eq!(nul_of(&store).as_deref(), Some("name"));
        assert_eq!(
            nul_of(&CreateStoreRequest { name: "Books".into(), location: "L\0".into() }).as_deref(),
            Some("location")
        );
        let search = |filters: Filters| SearchOrdersRequest { filters: Some(filters), limit: 10, ..Default::default() };
        let nested = search(Filters { customer_id: "c\0".into(), ..Default::default() });
        assert_eq!(nul_of(&nested).as_deref(), Some("filters.customer_id"));
        let repeated = search(Filters { store_ids: vec!["s1".into(), "s2\0".into()], ..Default::default() });
        assert_eq!(nul_of(&repeated).as_deref(), Some("filters.store_ids"));
    }

    #[test]
    fn other_bytes_pass() {
        // Zeros outside strings: a field number, a varint, a double.
        let search = SearchOrdersRequest {
            filters: Some(Filters { min_total: Some(0.0), customer_id: "c1".into(), ..Default::default() }),
            next: "n".into(),
            limit: 0,
            newest_first: true,
        };
        assert_eq!(nul_of(&search), None);
        assert_eq!(nul_of(&CreateStoreRequest::default()), None);
        // Not a message: left to prost's decoder.
        let schema = request::<CreateStoreRequest>().expect("a request type");
        assert_eq!(nul_in(schema, &[0x0a, 0x05, b'a'], 0), None);
        // What a client decodes (a response) is not checked.
        assert!(request::<CreateStoreResponse>().is_none());
    }
}
