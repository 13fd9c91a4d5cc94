//! Typed events, registered by name, encoded as JSON, upgraded from old shapes when read.
//!
//! * [`Event`] is one event type with a stable, versioned name (`"stores.StoreCreated.v1"`).
//! * [`EventSet`] is what can be decoded from a `(name, payload)` pair: one event, or an enum of
//!   events declared with [`event_set!`](crate::event_set). Aggregates and handlers use it.
//! * [`Registry`] holds [upcasters](Registry::upcast): when a stored or in-flight payload still
//!   has an old name, it is transformed step by step into the current shape before decoding.
//!   Give the same registry to every reader (ADR 0020): the [`Repository`](crate::aggregate::Repository)
//!   upcasts a stream as it loads it, the [`Router`](crate::router::Router) upcasts a message
//!   *before* it chooses the handler (so a `…v1` in flight, or a replayed dead letter, reaches
//!   the handler of `…v2`), and a [`ProjectionRunner`](crate::projection::ProjectionRunner)
//!   upcasts the log before its filter and projection see an event.
//!
//! Decoding never panics: an unknown name or a payload that does not fit is a [`CodecError`],
//! which the router treats as permanent and sends to the dead-letter topic with the reason.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a payload could not be encoded or decoded. Every variant is permanent: retrying the same
/// bytes will fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// No event type, and no upcaster, is registered under this name.
    #[error("unknown event name `{name}`")]
    UnknownEvent {
        /// The name that was not recognised.
        name: String,
    },
    /// The payload is not a valid encoding of the named event.
    #[error("payload of `{name}` does not decode: {source}")]
    Decode {
        /// The event name.
        name: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The event could not be encoded (a map with non-string keys, for example).
    #[error("event `{name}` does not encode: {source}")]
    Encode {
        /// The event name.
        name: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// An upcaster refused an old payload.
    #[error("upcasting `{from}` failed: {reason}")]
    Upcast {
        /// The old name.
        from: String,
        /// What the upcaster said.
        reason: String,
    },
}

/// One event type with a stable name. Put the version in the name (`…v1`, `…v2`) and register
/// an upcaster from the old name when the shape changes.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name stored and published with every instance.
    const NAME: &'static str;
}

/// Something decodable from a `(name, payload)` pair: a single [`Event`] or an enum of them.
pub trait EventSet: Sized + Send + Sync + 'static {
    /// The name of this particular value.
    fn event_name(&self) -> &'static str;
    /// The names this set decodes.
    fn names() -> Vec<&'static str>;
    /// Encodes the value (JSON).
    fn encode(&self) -> Result<Vec<u8>, CodecError>;
    /// Decodes a value from a name this set knows; [`CodecError::UnknownEvent`] otherwise.
    fn decode(name: &str, payload: &[u8]) -> Result<Self, CodecError>;
}

impl<E: Event> EventSet for E {
    fn event_name(&self) -> &'static str {
        E::NAME
    }
    fn names() -> Vec<&'static str> {
        vec![E::NAME]
    }
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        encode_json(E::NAME, self)
    }
    fn decode(name: &str, payload: &[u8]) -> Result<Self, CodecError> {
        if name != E::NAME {
            return Err(CodecError::UnknownEvent { name: name.to_owned() });
        }
        decode_json(name, payload)
    }
}

/// JSON-encodes a value, naming it in the error.
pub fn encode_json<T: Serialize>(name: &str, value: &T) -> Result<Vec<u8>, CodecError> {
    serde_json::to_vec(value).map_err(|source| CodecError::Encode { name: name.to_owned(), source })
}

/// JSON-decodes a value, naming it in the error.
pub fn decode_json<T: DeserializeOwned>(name: &str, payload: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(payload).map_err(|source| CodecError::Decode { name: name.to_owned(), source })
}

/// Declares an enum of events that is an [`EventSet`], with `From` for each variant's event.
///
/// ```
/// use herald::{event_set, codec::{Event, EventSet}};
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Opened { id: String }
/// impl Event for Opened { const NAME: &'static str = "Opened.v1"; }
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Closed;
/// impl Event for Closed { const NAME: &'static str = "Closed.v1"; }
///
/// event_set! {
///     #[derive(Debug, Clone, PartialEq)]
///     pub enum DoorEvent { Opened(Opened), Closed(Closed) }
/// }
/// let e: DoorEvent = Closed.into();
/// let bytes = e.encode().unwrap();
/// assert_eq!(DoorEvent::decode("Closed.v1", &bytes).unwrap(), e);
/// ```
#[macro_export]
macro_rules! event_set {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        $vis enum $name { $($variant($ty)),+ }

        impl $crate::codec::EventSet for $name {
            fn event_name(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$ty as $crate::codec::Event>::NAME),+ }
            }
            fn names() -> ::std::vec::Vec<&'static str> {
                vec![$(<$ty as $crate::codec::Event>::NAME),+]
            }
            fn encode(&self) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::codec::CodecError> {
                match self {
                    $(Self::$variant(e) => $crate::codec::encode_json(<$ty as $crate::codec::Event>::NAME, e)),+
                }
            }
            fn decode(name: &str, payload: &[u8]) -> ::std::result::Result<Self, $crate::codec::CodecError> {
                $(
                    if name == <$ty as $crate::codec::Event>::NAME {
                        return $crate::codec::decode_json::<$ty>(name, payload).map(Self::$variant);
                    }
                )+
                Err($crate::codec::CodecError::UnknownEvent { name: name.to_owned() })
            }
        }

        $(
            impl ::std::convert::From<$ty> for $name {
                fn from(e: $ty) -> Self { Self::$variant(e) }
            }
        )+
    };
}

/// Declares events and their [`EventSet`] at once: a struct per event, with its name and
/// fields, and an enum of them (see [`event_set!`](crate::event_set)). The attributes apply to
/// every struct and to the enum; the structs must derive `Serialize` and `Deserialize`.
///
/// ```
/// use herald::codec::{Event, EventSet};
/// herald::events! {
///     #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
///     pub enum AccountEvent {
///         Opened = "bank.Opened.v1" { owner: String },
///         Deposited = "bank.Deposited.v1" { cents: i64 },
///     }
/// }
/// assert_eq!(Deposited::NAME, "bank.Deposited.v1");
/// let e: AccountEvent = Deposited { cents: 5 }.into();
/// assert_eq!(AccountEvent::decode(e.event_name(), &e.encode().unwrap()).unwrap(), e);
/// ```
#[macro_export]
macro_rules! events {
    // One event at a time (the enum's attributes travel as one token group: macro_rules cannot
    // repeat them inside the events' repetition).
    (@each [$($attrs:tt)*] [$vis:vis]) => {};
    (@each [$($attrs:tt)*] [$vis:vis]
        $(#[$vmeta:meta])* $event:ident = $name:literal { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }
        $(, $($rest:tt)*)?
    ) => {
        $($attrs)* $(#[$vmeta])*
        $vis struct $event { $($(#[$fmeta])* pub $field: $ty),* }
        impl $crate::codec::Event for $event {
            const NAME: &'static str = $name;
        }
        $crate::events!(@each [$($attrs)*] [$vis] $($($rest)*)?);
    };
    (
        $(#[$meta:meta])* $vis:vis enum $set:ident {
            $($(#[$vmeta:meta])* $event:ident = $name:literal { $($body:tt)* }),+ $(,)?
        }
    ) => {
        $crate::events!(@each [$(#[$meta])*] [$vis] $($(#[$vmeta])* $event = $name { $($body)* }),+);
        $crate::event_set! { $(#[$meta])* $vis enum $set { $($event($event)),+ } }
    };
}

/// Header (in [`Metadata::headers`](crate::message::Metadata)) on a message or event that
/// Herald upcast before handing it on: the name it was sent, stored or dead-lettered under.
/// The reader sees the current name and payload; this header is for diagnostics. The router
/// also names the old name in a debug event of the `handle` span. Dead letters and the log
/// keep what was written (old name, old payload), so a replay is upcast again.
pub const UPCAST_FROM: &str = "herald-upcast-from";

type UpcastFn = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Known upcasters, from an old event name to the next name and shape. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    upcasters: Arc<HashMap<String, (String, UpcastFn)>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("upcasters", &self.upcasters.keys().collect::<Vec<_>>()).finish()
    }
}

/// The longest upcasting chain followed before giving up (guards against a cycle).
const MAX_UPCAST_STEPS: usize = 32;

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an upcaster: a payload named `from` is turned into one named `to` by `f`.
    /// Chains (`v1 → v2 → v3`) are followed.
    #[must_use]
    pub fn upcast(
        mut self,
        from: impl Into<String>,
        to: impl Into<String>,
        f: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.upcasters).insert(from.into(), (to.into(), Arc::new(f)));
        self
    }

    /// Decodes `(name, payload)` as `S`, upcasting old names first.
    pub fn decode<S: EventSet>(&self, name: &str, payload: &[u8]) -> Result<S, CodecError> {
        let known = S::names();
        if known.contains(&name) {
            return S::decode(name, payload);
        }
        let (name, payload) = self.upgrade(name, payload, &known)?;
        S::decode(&name, &payload)
    }

    /// Whether an upcaster is registered from `name` (it is an old name).
    pub fn has_upcaster(&self, name: &str) -> bool {
        self.upcasters.contains_key(name)
    }

    /// The names `name` becomes, step by step, through the registered upcasters — the next
    /// name first, the current name last; empty when `name` has no upcaster. Runs no upcaster
    /// (it only reads the chain), so a consumer can decide where to stop before paying for the
    /// transformation: the router stops at the first name a route has a handler for, a
    /// projection at the first name its filter accepts (see [`upcast_to`](Self::upcast_to)).
    /// A cycle ends the chain before its first repeated name.
    pub fn upcast_chain(&self, name: &str) -> Vec<&str> {
        let mut chain: Vec<&str> = Vec::new();
        let mut current = name;
        while let Some((next, _)) = self.upcasters.get(current) {
            if next == name || chain.contains(&next.as_str()) || chain.len() >= MAX_UPCAST_STEPS {
                break;
            }
            chain.push(next);
            current = next;
        }
        chain
    }

    /// Upcasts a payload named `name` into the shape named `target` (a name on
    /// [`upcast_chain`](Self::upcast_chain)), running each upcaster on the way; the payload
    /// unchanged when `name` is `target`.
    ///
    /// # Errors
    /// [`CodecError::Upcast`] when an upcaster refuses the payload, [`CodecError::Decode`]
    /// when the payload is not JSON, [`CodecError::UnknownEvent`] when `target` is not on the
    /// chain of `name`.
    pub fn upcast_to(&self, name: &str, payload: &[u8], target: &str) -> Result<Vec<u8>, CodecError> {
        self.upgrade(name, payload, &[target]).map(|(_, payload)| payload)
    }

    /// Follows upcasters from `name` until a name in `target` is reached.
    fn upgrade(&self, name: &str, payload: &[u8], target: &[&str]) -> Result<(String, Vec<u8>), CodecError> {
        let mut current = name.to_owned();
        let mut value: Option<Value> = None;
        for _ in 0..MAX_UPCAST_STEPS {
            if target.contains(&current.as_str()) {
                let bytes = match value {
                    Some(v) => encode_json(&current, &v)?,
                    None => payload.to_vec(),
                };
                return Ok((current, bytes));
            }
            let Some((next, f)) = self.upcasters.get(&current) else {
                return Err(CodecError::UnknownEvent { name: name.to_owned() });
            };
            let input = match value.take() {
                Some(v) => v,
                None => decode_json::<Value>(&current, payload)?,
            };
            value = Some(f(input).map_err(|reason| CodecError::Upcast { from: current.clone(), reason })?);
            current.clone_from(next);
        }
        Err(CodecError::Upcast { from: name.to_owned(), reason: "upcaster chain too long (a cycle?)".into() })
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct PriceSet {
        cents: i64,
        currency: String,
    }
    impl Event for PriceSet {
        const NAME: &'static str = "PriceSet.v3";
    }

    fn registry() -> Registry {
        Registry::new()
            // v1 stored a float amount in dollars.
            .upcast("PriceSet.v1", "PriceSet.v2", |mut v| {
                let dollars = v["amount"].as_f64().ok_or("amount missing")?;
                v["cents"] = Value::from((dollars * 100.0).round() as i64);
                Ok(v)
            })
            // v2 had no currency.
            .upcast("PriceSet.v2", "PriceSet.v3", |mut v| {
                v["currency"] = Value::from("USD");
                Ok(v)
            })
    }

    #[test]
    fn an_old_shape_is_upgraded_through_a_chain_of_upcasters() {
        let e: PriceSet = registry().decode("PriceSet.v1", br#"{"amount": 12.5}"#).unwrap();
        assert_eq!(e, PriceSet { cents: 1250, currency: "USD".into() });
    }

    #[test]
    fn an_unknown_name_is_an_error_not_a_panic() {
        let err = registry().decode::<PriceSet>("Nope.v1", b"{}").unwrap_err();
        assert!(matches!(err, CodecError::UnknownEvent { ref name } if name == "Nope.v1"), "{err}");
    }

    #[test]
    fn a_payload_that_does_not_decode_is_an_error_naming_the_event() {
        let err = registry().decode::<PriceSet>("PriceSet.v3", b"not json").unwrap_err();
        assert!(err.to_string().contains("PriceSet.v3"), "{err}");
    }

    #[test]
    fn the_chain_names_every_later_name_without_running_an_upcaster() {
        let registry =
            registry()
                .upcast("Loop.v1", "Loop.v2", |_| Err("never run".into()))
                .upcast("Loop.v2", "Loop.v1", |_| Err("never run".into()));
        assert_eq!(registry.upcast_chain("PriceSet.v1"), ["PriceSet.v2", "PriceSet.v3"]);
        assert_eq!(registry.upcast_chain("PriceSet.v2"), ["PriceSet.v3"]);
        assert!(registry.upcast_chain("PriceSet.v3").is_empty());
        assert!(registry.has_upcaster("PriceSet.v1") && !registry.has_upcaster("PriceSet.v3"));
        assert_eq!(registry.upcast_chain("Loop.v1"), ["Loop.v2"], "a cycle ends before repeating");
    }

    #[test]
    fn upcasting_stops_at_the_target_name() {
        let v2 = registry().upcast_to("PriceSet.v1", br#"{"amount": 1.5}"#, "PriceSet.v2").unwrap();
        let v2: Value = serde_json::from_slice(&v2).unwrap();
        assert_eq!((v2["cents"].as_i64(), v2.get("currency")), (Some(150), None));
        let err = registry().upcast_to("PriceSet.v3", b"{}", "PriceSet.v1").unwrap_err();
        assert!(matches!(err, CodecError::UnknownEvent { .. }), "{err}");
    }

    #[test]
    fn an_upcaster_that_refuses_is_an_error() {
        let err = registry().decode::<PriceSet>("PriceSet.v1", b"{}").unwrap_err();
        assert!(matches!(err, CodecError::Upcast { .. }), "{err}");
    }
}
