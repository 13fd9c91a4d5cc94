//! `mallbots serve`'s settings, from (lowest to highest precedence) the defaults, a TOML file,
//! `MALLBOTS_*` environment variables and command-line flags. `mallbots serve --print-config`
//! shows the result; `deploy/mallbots.toml` is a commented example with every default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::app::{Config, DEFAULT_NAMESPACE};

/// The file read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "mallbots.toml";

/// The most connections `pool_size` takes (PostgreSQL's default `max_connections` is 100).
pub const MAX_POOL_SIZE: u32 = 1000;

/// How long a basket stays open unless told otherwise.
pub const DEFAULT_BASKET_TTL: Duration = Duration::from_secs(30 * 60);

/// Everything `mallbots serve` can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the HTTP server listens.
    pub http_addr: String,
    /// Where the gRPC server listens.
    pub grpc_addr: String,
    /// `sqlite://FILE` or `postgres://USER@HOST:PORT/DB`.
    pub database: String,
    /// `nats://…`, `redis://…`, `amqp://…`, `kafka://…`; unset = the SQL broker on the database.
    pub broker: Option<String>,
    /// The PostgreSQL schema prefix and the broker's name prefix.
    pub namespace: String,
    /// The modules this process runs (`["all"]`, or names).
    pub modules: Vec<String>,
    /// The admin bearer token; unset = generated once and kept next to the database.
    pub admin_token: Option<String>,
    /// How long a basket stays open: one neither checked out nor canceled by then is canceled
    /// (a Herald scheduled message, due this long after the basket started). In the file: a
    /// number of seconds, or text with a unit (`"90s"`, `"30m"`, `"2h"`, `"500ms"`).
    #[serde(with = "duration_setting")]
    pub basket_ttl: Duration,
    /// Connections of each module's PostgreSQL pool; unset = 8 in a process running one
    /// module, 4 per module in one running several (see `deploy/mallbots.toml`).
    pub pool_size: Option<u32>,
    /// Logs and traces.
    pub telemetry: Telemetry,
}

/// Logs and traces (Herald's spans, one trace per order across processes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Which logs and spans to keep (`RUST_LOG` syntax).
    pub filter: String,
    /// `pretty` (one readable line per event) or `json` (one JSON object per line).
    pub log_format: String,
    /// Export spans over OTLP/gRPC to this endpoint (e.g. `http://127.0.0.1:4317`).
    pub otlp_endpoint: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            grpc_addr: "127.0.0.1:9000".into(),
            database: "sqlite://mallbots.db".into(),
            broker: None,
            namespace: DEFAULT_NAMESPACE.into(),
            modules: vec!["all".into()],
            admin_token: None,
            basket_ttl: DEFAULT_BASKET_TTL,
            pool_size: None,
            telemetry: Telemetry::default(),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self { filter: "info,sqlx=warn".into(), log_format: "pretty".into(), otlp_endpoint: None }
    }
}

impl Settings {
    /// The defaults, then `file` (or [`DEFAULT_FILE`] if it exists; an explicit file must
    /// exist), then `overrides` (flags and environment variables: only what they set).
    pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> anyhow::Result<(Self, Option<PathBuf>)> {
        let file = match file {
            Some(path) if !path.exists() => anyhow::bail!("the config file {} does not exist", path.display()),
            Some(path) => Some(path.to_owned()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.exists()),
        };
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let mut settings: Settings = figment
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', "; ")))?;
        if settings.telemetry.filter.trim().is_empty() {
            settings.telemetry.filter = Telemetry::default().filter; // an empty RUST_LOG
        }
        if let Some(size) = settings.pool_size
            && !(1..=MAX_POOL_SIZE).contains(&size)
        {
            anyhow::bail!("pool_size must be between 1 and {MAX_POOL_SIZE}, not {size}");
        }
        if settings.basket_ttl.is_zero() {
            anyhow::bail!("basket_ttl must be more than 0 (e.g. \"30m\")");
        }
        if !matches!(settings.telemetry.log_format.as_str(), "pretty" | "json") {
            anyhow::bail!(
                "telemetry.log_format must be \"pretty\" or \"json\", not {:?}",
                settings.telemetry.log_format
            );
        }
        Ok((settings, file))
    }

    /// What the app is built from.
    pub fn app_config(&self) -> Config {
        Config {
            http_addr: self.http_addr.clone(),
            grpc_addr: self.grpc_addr.clone(),
            database: self.database.clone(),
            broker: self.broker.clone(),
            namespace: self.namespace.clone(),
            ephemeral_broker: false,
            admin_token: self.admin_token.clone(),
            modules: self.modules.clone(),
            sms_latency: Duration::ZERO,
            basket_ttl: self.basket_ttl,
            pool_size: self.pool_size,
        }
    }

    /// These settings as TOML, passwords and the admin token hidden.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database = crate::app::redacted(&shown.database);
        shown.broker = shown.broker.as_deref().map(crate::app::redacted);
        shown.admin_token = shown.admin_token.map(|_| "***".into());
        toml_text(&shown)
    }
}

/// A small TOML writer for [`Settings`] (flat keys and one table).
fn toml_text(s: &Settings) -> String {
    let quote = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let optional = |key: &str, v: &Option<String>| match v {
        Some(v) => format!("{key} = {}\n", quote(v)),
        None => format!("# {key} = (unset)\n"),
    };
    let modules: Vec<String> = s.modules.iter().map(|m| quote(m)).collect();
    format!(
        "http_addr = {}\ngrpc_addr = {}\ndatabase = {}\n{}namespace = {}\nmodules = [{}]\n{}basket_ttl = {}\n{}\n[telemetry]\nfilter = {}\nlog_format = {}\n{}",
        quote(&s.http_addr),
        quote(&s.grpc_addr),
        quote(&s.database),
        optional("broker", &s.broker),
        quote(&s.namespace),
        modules.join(", "),
        optional("admin_token", &s.admin_token),
        quote(&duration_text(s.basket_ttl)),
        match s.pool_size {
            Some(size) => format!("pool_size = {size}\n"),
            None => "# pool_size = (unset)\n".to_owned(),
        },
        quote(&s.telemetry.filter),
        quote(&s.telemetry.log_format),
        optional("otlp_endpoint", &s.telemetry.otlp_endpoint),
    )
}

/// A duration as the settings take it: `30` (seconds), `30s`, `5m`, `2h`, `500ms`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((text, ""), |i| text.split_at(i));
    let number: f64 = number.parse().map_err(|_| format!("not a duration: {text:?} (e.g. 30, 90s, 5m, 500ms)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (s, ms, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// A duration as [`parse_duration`] reads it back, in the largest whole unit (`30m`, `90s`,
/// `1500ms`; to the millisecond).
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// A [`Duration`] setting: written as text with a unit ([`duration_text`]); read from that, or
/// from a number of seconds.
mod duration_setting {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::duration_text(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Seconds(u64),
            Text(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Seconds(s) => Ok(Duration::from_secs(s)),
            Given::Text(text) => super::parse_duration(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    }

    #[test]
    fn a_file_overrides_defaults_and_flags_override_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "namespace = \"from_file\"\nmodules = [\"stores\"]\n[telemetry]\nlog_format = \"json\"\n",
        )
        .expect("write");
        let (s, used) = Settings::load(Some(&file), &Flags::default()).expect("loads");
        assert_eq!(used.as_deref(), Some(file.as_path()));
        assert_eq!((s.namespace.as_str(), s.modules.as_slice()), ("from_file", &["stores".to_owned()][..]));
        assert_eq!(s.telemetry.log_format, "json");
        assert_eq!(s.http_addr, Settings::default().http_addr, "defaults fill the rest");
        let flags = Flags { namespace: Some("from_flag".into()) };
        assert_eq!(Settings::load(Some(&file), &flags).expect("loads").0.namespace, "from_flag");
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "namespce = \"x\"\n").expect("write");
        let e = Settings::load(Some(&file), &Flags::default()).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("namespce"), "{e}");
        std::fs::write(&file, "[telemetry]\nlog_format = \"xml\"\n").expect("write");
        let e = Settings::load(Some(&file), &Flags::default()).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("log_format"), "{e}");
        let e = Settings::load(Some(&dir.path().join("missing.toml")), &Flags::default()).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn the_printed_settings_hide_secrets_and_load_back() {
        let s = Settings {
            database: "postgres://bob:hunter2@db/mall".into(),
            admin_token: Some("secret".into()),
            ..Settings::default()
        };
        let text = s.to_toml();
        assert!(!text.contains("hunter2") && !text.contains("secret"), "{text}");
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("m.toml");
        std::fs::write(&file, &text).expect("write");
        let (back, _) = Settings::load(Some(&file), &Flags::default()).expect("the printed settings load");
        assert_eq!(back.namespace, s.namespace);
    }

    #[test]
    fn the_basket_lifetime_reads_with_a_unit_or_in_seconds() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("m.toml");
        for (text, expected) in [("\"90s\"", 90_000), ("\"2h\"", 7_200_000), ("120", 120_000), ("\"1.5s\"", 1500)] {
            std::fs::write(&file, format!("basket_ttl = {text}\n")).expect("write");
            let (s, _) = Settings::load(Some(&file), &Flags::default()).expect("loads");
            assert_eq!(s.basket_ttl, Duration::from_millis(expected), "{text}");
            // What `--print-config` writes loads back the same.
            std::fs::write(&file, s.to_toml()).expect("write");
            assert_eq!(Settings::load(Some(&file), &Flags::default()).expect("loads").0.basket_ttl, s.basket_ttl);
        }
        for bad in ["\"0s\"", "\"soon\"", "\"5 days\""] {
            std::fs::write(&file, format!("basket_ttl = {bad}\n")).expect("write");
            let e = Settings::load(Some(&file), &Flags::default()).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("basket_ttl") || e.contains("duration") || e.contains("unit"), "{bad}: {e}");
        }
        assert_eq!(duration_text(Settings::default().basket_ttl), "30m");
    }

    #[test]
    fn the_pool_size_is_a_count_of_connections_or_unset() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "pool_size = 12\n").expect("write");
        let (s, _) = Settings::load(Some(&file), &Flags::default()).expect("loads");
        assert_eq!((s.pool_size, s.app_config().pool_size), (Some(12), Some(12)));
        std::fs::write(&file, s.to_toml()).expect("write");
        assert_eq!(Settings::load(Some(&file), &Flags::default()).expect("loads").0.pool_size, Some(12));
        for bad in ["0", "1001", "-1", "\"many\""] {
            std::fs::write(&file, format!("pool_size = {bad}\n")).expect("write");
            let e = Settings::load(Some(&file), &Flags::default()).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("pool_size"), "{bad}: {e}");
        }
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    }

    /// `deploy/mallbots.toml` (the documented example) loads and says what the defaults say.
    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mallbots.toml"));
        let (example, _) = Settings::load(Some(path), &Flags::default()).expect("the example loads");
        assert_eq!(example, Settings::default());
    }
}
