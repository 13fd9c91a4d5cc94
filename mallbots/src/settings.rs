//! `mallbots serve`'s settings, from (lowest to highest precedence) the defaults, a TOML file,
//! `MALLBOTS_*` environment variables and command-line flags. `mallbots serve --print-config`
//! shows the result; `deploy/mallbots.toml` is a commented example with every default.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::app::{Config, DEFAULT_NAMESPACE};

/// The file read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "mallbots.toml";

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
            sms_latency: std::time::Duration::ZERO,
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
        "http_addr = {}\ngrpc_addr = {}\ndatabase = {}\n{}namespace = {}\nmodules = [{}]\n{}\n[telemetry]\nfilter = {}\nlog_format = {}\n{}",
        quote(&s.http_addr),
        quote(&s.grpc_addr),
        quote(&s.database),
        optional("broker", &s.broker),
        quote(&s.namespace),
        modules.join(", "),
        optional("admin_token", &s.admin_token),
        quote(&s.telemetry.filter),
        quote(&s.telemetry.log_format),
        optional("otlp_endpoint", &s.telemetry.otlp_endpoint),
    )
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

    /// `deploy/mallbots.toml` (the documented example) loads and says what the defaults say.
    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mallbots.toml"));
        let (example, _) = Settings::load(Some(path), &Flags::default()).expect("the example loads");
        assert_eq!(example, Settings::default());
    }
}
