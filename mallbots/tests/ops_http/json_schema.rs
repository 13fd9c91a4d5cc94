//! Values for the JSON Schemas of an OpenAPI document (what utoipa writes into it), as proptest
//! strategies: values a schema accepts, and values it refuses, each with how it breaks it.
//!
//! Handles what a request schema of this API uses: `$ref` to components, `type` (with
//! `"null"`), `enum`, `format` (`date-time`, `uuid`), `minimum`/`maximum` (and exclusive ones,
//! 3.0 and 3.1 style), `multipleOf`, `minLength`/`maxLength`, `pattern`, arrays with
//! `items`/`minItems`/`maxItems`, objects with `properties`/`required`/`additionalProperties`,
//! and `oneOf`/`anyOf`/`allOf` for valid values.
//!
//! One rule of the API is in the document's description, not in its schemas: no text holds the
//! NUL character. Valid text never does; every string has a refused value that does.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::{Map, Value, json};

/// How a refused value breaks its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breach {
    /// Its shape: a wrong type, a missing required or an unknown property, a malformed date or
    /// uuid. Decoding refuses it before anything is looked up: always a 400.
    Shape,
    /// A rule about the value: a range, length, pattern or enumeration. The server may look up
    /// what the request names first, so the 404 or 409 of that can come before the 400.
    Rule,
}

/// A refused value and how it breaks its schema.
pub type Refused = (Value, Breach);

/// Where a value goes: a JSON body keeps its type; a query parameter is text, so a string
/// parameter has no "wrong type"; a path segment is text that cannot be empty (the path would
/// not be the operation's); a header is text that cannot hold control characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Json,
    Query,
    Segment,
    Header,
}

/// The NUL character, which no text of the API may hold.
const NUL: char = '\0';

/// The ids of real entities by kind (`store`, `product`…): a string property or parameter
/// named `…Id` (`storeId`), and the items of an array named `…Ids`, take one of its kind half
/// the time (of any kind if none is known), so that requests reach real stores, products,
/// baskets… and not only 404s.
#[derive(Clone, Debug, Default)]
pub struct Ids(BTreeMap<String, Vec<String>>);

impl Ids {
    pub fn add(&mut self, kind: &str, id: &str) {
        self.0.entry(kind.to_owned()).or_default().push(id.to_owned());
    }

    /// The ids for a value called `name` (`storeId`, `productIds`, `id`): of its kind, else all.
    fn named(&self, name: &str) -> Vec<String> {
        let lower = name.to_ascii_lowercase();
        let kind = lower.strip_suffix("ids").or_else(|| lower.strip_suffix("id")).unwrap_or(&lower);
        let kind = kind.trim_end_matches('s');
        match self.0.get(kind) {
            Some(ids) => ids.clone(),
            None => self.0.values().flatten().cloned().collect(),
        }
    }
}

/// The strategies of the schemas of one OpenAPI document.
#[derive(Clone, Debug)]
pub struct Schemas {
    components: Map<String, Value>,
    ids: Ids,
}

impl Schemas {
    pub fn new(doc: &Value, ids: Ids) -> Self {
        let components = doc["components"]["schemas"].as_object().cloned().unwrap_or_default();
        Self { components, ids }
    }

    /// `schema`, its `$ref` followed.
    pub fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.strip_prefix("#/components/schemas/").unwrap_or(reference);
                let target = self.components.get(name).unwrap_or_else(|| panic!("no schema {reference}"));
                self.resolve(target)
            }
            None => schema,
        }
    }

    /// Values `schema` accepts.
    pub fn valid(&self, schema: &Value) -> BoxedStrategy<Value> {
        self.valid_named("", schema)
    }

    /// Values `schema` accepts, for a property or parameter called `name` (`…Id`s get real ones
    /// half the time).
    pub fn valid_named(&self, name: &str, schema: &Value) -> BoxedStrategy<Value> {
        let schema = self.resolve(schema);
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return proptest::sample::select(values.clone()).boxed();
        }
        for combinator in ["oneOf", "anyOf"] {
            if let Some(branches) = schema.get(combinator).and_then(Value::as_array) {
                return Union::new(branches.iter().map(|b| self.valid_named(name, b))).boxed();
            }
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            return self.object(&self.merged(parts));
        }
        let types = types(schema);
        if types.is_empty() {
            return any_json();
        }
        let mut real_ids = if name.to_ascii_lowercase().ends_with("id") { self.ids.named(name) } else { Vec::new() };
        if schema.get("format").and_then(Value::as_str) == Some("uuid") {
            real_ids.retain(|id| uuid::Uuid::parse_str(id).is_ok());
        }
        let mut choices: Vec<(u32, BoxedStrategy<Value>)> = Vec::new();
        for kind in &types {
            let strategy = match *kind {
                "null" => Just(Value::Null).boxed(),
                "string" if !real_ids.is_empty() => {
                    let real = proptest::sample::select(real_ids.clone()).prop_map(Value::String);
                    prop_oneof![real, string(schema)].boxed()
                }
                "string" => string(schema),
                "integer" => integer(schema),
                "number" => number(schema),
                "boolean" => any::<bool>().prop_map(Value::Bool).boxed(),
                "array" => {
                    let singular = name.strip_suffix('s').unwrap_or(name);
                    let items = schema.get("items").map_or_else(any_json, |items| self.valid_named(singular, items));
                    array(schema, items)
                }
                "object" => self.object(schema),
                other => panic!("unknown JSON Schema type {other}"),
            };
            choices.push((if *kind == "null" { 1 } else { 4 }, strategy));
        }
        Union::new_weighted(choices).boxed()
    }

    /// An object of `schema`: every required property, each optional one half the time, and
    /// an extra property now and then where the schema allows them.
    fn object(&self, schema: &Value) -> BoxedStrategy<Value> {
        let required = required(schema);
        let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = properties(schema)
            .map(|(name, property)| {
                let key = name.clone();
                let value = self.valid_named(name, property).prop_map(move |v| (key.clone(), v));
                if required.contains(name) { value.prop_map(Some).boxed() } else { proptest::option::of(value).boxed() }
            })
            .collect();
        let extra = if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            Just(None).boxed()
        } else {
            proptest::option::weighted(0.2, Just(("xFuzzExtra".to_owned(), json!(1)))).boxed()
        };
        (fields, extra)
            .prop_map(|(fields, extra)| Value::Object(fields.into_iter().flatten().chain(extra).collect()))
            .boxed()
    }

    /// The objects of `allOf` as one.
    fn merged(&self, parts: &[Value]) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for part in parts.iter().map(|p| self.resolve(p)) {
            properties.extend(part["properties"].as_object().cloned().unwrap_or_default());
            required.extend(part["required"].as_array().cloned().unwrap_or_default());
        }
        json!({ "type": "object", "properties": properties, "required": required })
    }

    /// Values `schema` refuses, one way each (empty if it refuses none this knows to make).
    pub fn invalid(&self, schema: &Value, carrier: Carrier) -> Vec<BoxedStrategy<Refused>> {
        let schema = self.resolve(schema);
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            return self.invalid(&self.merged(parts), carrier);
        }
        let types = types(schema);
        let mut refused: Vec<BoxedStrategy<Refused>> =
            wrong_types(&types, carrier).into_iter().map(|value| Just((value, Breach::Shape)).boxed()).collect();
        if schema.get("enum").is_some() {
            refused.push(Just((json!("not-one-of-the-values"), Breach::Rule)).boxed());
        }
        let main = types.iter().copied().find(|t| *t != "null");
        match main {
            Some("string") => refused.extend(invalid_strings(schema, carrier)),
            Some("integer") => {
                let (lo, hi) = integer_bounds(schema);
                if lo > i64::MIN && lower_bound(schema).is_some() {
                    refused.push(Just((json!(lo - 1), Breach::Rule)).boxed());
                }
                if hi < i64::MAX && upper_bound(schema).is_some() {
                    refused.push(Just((json!(hi + 1), Breach::Rule)).boxed());
                }
            }
            Some("number") => refused.extend(invalid_numbers(schema)),
            Some("array") if carrier == Carrier::Json => {
                let items = schema.get("items").cloned().unwrap_or(json!({}));
                let valid_items = self.valid(&items);
                for bad in self.invalid(&items, carrier) {
                    let with_bad = (proptest::collection::vec(valid_items.clone(), 0..3), bad).prop_map(
                        |(mut items, (bad, breach))| {
                            items.push(bad);
                            (Value::Array(items), breach)
                        },
                    );
                    refused.push(with_bad.boxed());
                }
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                    let too_many = proptest::collection::vec(valid_items, len(max + 1)..=len(max + 3))
                        .prop_map(|items| (Value::Array(items), Breach::Rule));
                    refused.push(too_many.boxed());
                }
            }
            Some("object") if carrier == Carrier::Json => refused.extend(self.invalid_objects(schema)),
            _ => {}
        }
        refused
    }

    /// Objects of `schema` with one thing wrong: a required property missing, an unknown one
    /// (where none may be added), or one property refused by its own schema.
    fn invalid_objects(&self, schema: &Value) -> Vec<BoxedStrategy<Refused>> {
        let valid = self.object(schema);
        let mut refused = Vec::new();
        for name in required(schema) {
            let missing = valid.clone().prop_map(move |mut object| {
                object.as_object_mut().expect("an object").remove(&name);
                (object, Breach::Shape)
            });
            refused.push(missing.boxed());
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            let unknown = valid.clone().prop_map(|mut object| {
                object.as_object_mut().expect("an object").insert("unknownField".into(), json!(1));
                (object, Breach::Shape)
            });
            refused.push(unknown.boxed());
        }
        for (name, property) in properties(schema) {
            for bad in self.invalid(property, Carrier::Json) {
                let name = name.clone();
                let with_bad = (valid.clone(), bad).prop_map(move |(mut object, (bad, breach))| {
                    object.as_object_mut().expect("an object").insert(name.clone(), bad);
                    (object, breach)
                });
                refused.push(with_bad.boxed());
            }
        }
        refused
    }
}

/// The JSON types `schema` allows (3.1's `type` list, or 3.0's `nullable`).
pub fn types(schema: &Value) -> Vec<&str> {
    let mut types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ if schema.get("enum").is_some() => vec!["string"],
        _ => vec![],
    };
    if schema.get("nullable") == Some(&Value::Bool(true)) && !types.contains(&"null") {
        types.push("null");
    }
    types
}

/// The declared properties of an object schema.
fn properties(schema: &Value) -> impl Iterator<Item = (&String, &Value)> {
    schema.get("properties").and_then(Value::as_object).into_iter().flatten()
}

/// The names of its required properties.
pub fn required(schema: &Value) -> Vec<String> {
    schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

fn len(n: u64) -> usize {
    usize::try_from(n).expect("a length that fits")
}

/// One value of each JSON type `types` does not allow (in text, only an unparsable number).
fn wrong_types(types: &[&str], carrier: Carrier) -> Vec<Value> {
    if types.is_empty() {
        return Vec::new();
    }
    let allows = |t: &str| types.contains(&t) || (t == "integer" && types.contains(&"number"));
    match carrier {
        Carrier::Query | Carrier::Segment | Carrier::Header if allows("string") => Vec::new(),
        Carrier::Query | Carrier::Segment | Carrier::Header => vec![json!("fuzz")],
        Carrier::Json => [
            ("string", json!("fuzz")),
            ("integer", json!(7)),
            ("number", json!(1.5)),
            ("boolean", json!(true)),
            ("array", json!([])),
            ("object", json!({})),
            ("null", Value::Null),
        ]
        .into_iter()
        .filter(|(t, _)| !allows(t))
        .map(|(_, value)| value)
        .collect(),
    }
}

/// Strings of `schema`: a date-time, a uuid, a match of its pattern, or any text, within its
/// lengths.
fn string(schema: &Value) -> BoxedStrategy<Value> {
    let min = schema.get("minLength").and_then(Value::as_u64).map_or(0, len);
    let max = schema.get("maxLength").and_then(Value::as_u64).map(len);
    let text = match (schema.get("format").and_then(Value::as_str), schema.get("pattern").and_then(Value::as_str)) {
        (Some("date-time"), _) => date_time(),
        (Some("uuid"), _) => any::<[u8; 16]>().prop_map(|b| uuid::Uuid::from_bytes(b).to_string()).boxed(),
        (_, Some(pattern)) => matching(pattern),
        _ => {
            let short = min..=max.unwrap_or(usize::MAX).min(min + 16);
            let long = min.max(200)..=max.unwrap_or(2000).max(min.max(200));
            let char = any::<char>().prop_filter("NUL", |c| *c != NUL);
            let chars = |lengths| proptest::collection::vec(char.clone(), lengths).prop_map(String::from_iter);
            prop_oneof![8 => chars(short), 1 => chars(long)].boxed()
        }
    };
    text.prop_filter("outside the schema's lengths, or NUL", move |s| {
        let n = s.chars().count();
        n >= min && max.is_none_or(|max| n <= max) && !s.contains(NUL)
    })
    .prop_map(Value::String)
    .boxed()
}

/// Strings matching an ECMA-262 `pattern` (a simple one: the Rust regex syntax reads it alike).
/// JSON Schema patterns are not anchored, and proptest makes whole matches of an expression
/// without anchors: a side without its anchor gets some text of any kind.
fn matching(pattern: &str) -> BoxedStrategy<String> {
    let (anchored_start, core) = pattern.strip_prefix('^').map_or((false, pattern), |rest| (true, rest));
    let (anchored_end, core) = match core.strip_suffix('$') {
        Some(rest) if !rest.ends_with('\\') => (true, rest),
        _ => (false, core),
    };
    let around = |anchored: bool| if anchored { "" } else { "[^\\x00]{0,6}" };
    let regex = format!("{}(?:{core}){}", around(anchored_start), around(anchored_end));
    proptest::string::string_regex(&regex).unwrap_or_else(|e| panic!("pattern {pattern}: {e}")).boxed()
}

/// RFC 3339 date-times, in UTC or with an offset, with or without fractions of a second.
fn date_time() -> BoxedStrategy<String> {
    let date = (1970u32..2100, 1u32..=12, 1u32..=28);
    let time = (0u32..24, 0u32..60, 0u32..60, proptest::option::of(0u32..1000));
    let offset = prop_oneof![
        Just("Z".to_owned()),
        (any::<bool>(), 0u32..14, proptest::sample::select(vec![0u32, 30, 45]))
            .prop_map(|(east, h, m)| format!("{}{h:02}:{m:02}", if east { '+' } else { '-' })),
    ];
    (date, time, offset)
        .prop_map(|((y, mo, d), (h, mi, s, millis), offset)| {
            let fraction = millis.map(|ms| format!(".{ms:03}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{offset}")
        })
        .boxed()
}

/// Strings `schema` refuses: too short or long, not matching its pattern, not its format.
fn invalid_strings(schema: &Value, carrier: Carrier) -> Vec<BoxedStrategy<Refused>> {
    let mut refused = Vec::new();
    let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
    if carrier != Carrier::Header {
        refused.push(Just((json!(format!("a{NUL}b")), Breach::Shape)).boxed());
    }
    if min > 0 && carrier != Carrier::Segment {
        refused.push(Just((json!(""), Breach::Rule)).boxed());
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).map(len) {
        let too_long = (max + 1..max + 20).prop_map(|n| (Value::String("x".repeat(n)), Breach::Rule));
        refused.push(too_long.boxed());
    }
    if schema.get("pattern").is_some() {
        // Every pattern of this API asks for a character that is not a space.
        refused.push(Just((json!("  "), Breach::Rule)).boxed());
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("date-time") => refused.push(Just((json!("yesterday"), Breach::Shape)).boxed()),
        Some("uuid") => refused.push(Just((json!("not-a-uuid"), Breach::Shape)).boxed()),
        _ => {}
    }
    refused
}

/// The lower bound of a number: (bound, exclusive). 3.1 writes `exclusiveMinimum: x`; 3.0
/// writes `minimum: x, exclusiveMinimum: true`.
fn lower_bound(schema: &Value) -> Option<(f64, bool)> {
    bound(schema, "minimum", "exclusiveMinimum")
}

fn upper_bound(schema: &Value) -> Option<(f64, bool)> {
    bound(schema, "maximum", "exclusiveMaximum")
}

fn bound(schema: &Value, inclusive: &str, exclusive: &str) -> Option<(f64, bool)> {
    if let Some(x) = schema.get(exclusive).and_then(Value::as_f64) {
        return Some((x, true));
    }
    let x = schema.get(inclusive).and_then(Value::as_f64)?;
    Some((x, schema.get(exclusive) == Some(&Value::Bool(true))))
}

/// The integers `schema` allows, as an inclusive range (its format's when it sets none).
fn integer_bounds(schema: &Value) -> (i64, i64) {
    let (min, max) = match schema.get("format").and_then(Value::as_str) {
        Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
        _ => (i64::MIN, i64::MAX),
    };
    #[allow(clippy::cast_possible_truncation)]
    let lo = lower_bound(schema).map_or(min, |(x, exclusive)| {
        let lo = x.ceil() as i64;
        if exclusive && x.ceil() == x { lo + 1 } else { lo }
    });
    #[allow(clippy::cast_possible_truncation)]
    let hi = upper_bound(schema).map_or(max, |(x, exclusive)| {
        let hi = x.floor() as i64;
        if exclusive && x.floor() == x { hi - 1 } else { hi }
    });
    (lo.max(min), hi.min(max))
}

/// Integers of `schema`, mostly near its lower end.
fn integer(schema: &Value) -> BoxedStrategy<Value> {
    let (lo, hi) = integer_bounds(schema);
    assert!(lo <= hi, "no integer fits {schema}");
    prop_oneof![3 => lo..=hi.min(lo.saturating_add(100)), 1 => lo..=hi].prop_map(Value::from).boxed()
}

/// A number schema's `multipleOf` as steps: the value of step `k` is `k / per_unit` (exact for
/// decimal steps such as 0.01, unlike `k * 0.01`).
#[derive(Clone, Copy, Debug)]
struct Steps {
    per_unit: f64,
}

impl Steps {
    fn of(schema: &Value) -> Option<Self> {
        let step = schema.get("multipleOf").and_then(Value::as_f64)?;
        let per_unit = (1.0 / step).round();
        assert!((per_unit * step - 1.0).abs() < 1e-9, "multipleOf {step} is not 1/n");
        Some(Self { per_unit })
    }

    #[allow(clippy::cast_precision_loss)]
    fn value(self, k: i64) -> f64 {
        k as f64 / self.per_unit
    }

    /// The steps within the bounds of `schema`.
    #[allow(clippy::cast_possible_truncation)]
    fn range(self, schema: &Value) -> (i64, i64) {
        let lo = lower_bound(schema).map_or(-1e9, |(x, exclusive)| {
            let k = (x * self.per_unit).ceil();
            if exclusive && k == x * self.per_unit { k + 1.0 } else { k }
        });
        let hi = upper_bound(schema).map_or(1e9, |(x, exclusive)| {
            let k = (x * self.per_unit).floor();
            if exclusive && k == x * self.per_unit { k - 1.0 } else { k }
        });
        (lo as i64, hi as i64)
    }
}

/// Numbers of `schema`, mostly near its lower end.
fn number(schema: &Value) -> BoxedStrategy<Value> {
    if let Some(steps) = Steps::of(schema) {
        let (lo, hi) = steps.range(schema);
        assert!(lo <= hi, "no number fits {schema}");
        return prop_oneof![3 => lo..=hi.min(lo + 100_000), 1 => lo..=hi]
            .prop_map(move |k| json!(steps.value(k)))
            .boxed();
    }
    let lower = lower_bound(schema);
    let upper = upper_bound(schema);
    let lo = lower.map_or(-1e6, |(x, _)| x);
    let hi = upper.map_or(1e6, |(x, _)| x);
    (lo..=hi)
        .prop_filter("on an exclusive bound", move |v| {
            lower.is_none_or(|(x, exclusive)| !exclusive || *v > x)
                && upper.is_none_or(|(x, exclusive)| !exclusive || *v < x)
        })
        .prop_map(|v| json!(v))
        .boxed()
}

/// Numbers `schema` refuses: below or above its bounds, or between its steps.
fn invalid_numbers(schema: &Value) -> Vec<BoxedStrategy<Refused>> {
    let steps = Steps::of(schema);
    let step = steps.map_or(1.0, |s| 1.0 / s.per_unit);
    let mut refused = Vec::new();
    if let Some((x, exclusive)) = lower_bound(schema) {
        refused.push(Just((json!(if exclusive { x } else { x - step }), Breach::Rule)).boxed());
    }
    if let Some((x, exclusive)) = upper_bound(schema) {
        refused.push(Just((json!(if exclusive { x } else { x + step }), Breach::Rule)).boxed());
    }
    if let Some(steps) = steps {
        let (lo, hi) = steps.range(schema);
        let between = (lo..hi.min(lo + 100_000)).prop_map(move |k| {
            let value = (steps.value(k) + steps.value(k + 1)) / 2.0;
            (json!(value), Breach::Rule)
        });
        refused.push(between.boxed());
    }
    refused
}

/// Arrays of `items`, within the lengths of `schema`.
fn array(schema: &Value, items: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    let min = schema.get("minItems").and_then(Value::as_u64).map_or(0, len);
    let max = schema.get("maxItems").and_then(Value::as_u64).map_or(min + 4, len);
    proptest::collection::vec(items, min..=max).prop_map(Value::Array).boxed()
}

/// Any small JSON value (for a schema that says nothing).
fn any_json() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::String),
        Just(json!({})),
        Just(json!([])),
    ]
    .boxed()
}
