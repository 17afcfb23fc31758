//! pmoas configuration.
//!
//! Every setting has one dotted key and three spellings, generated from the
//! table in [`settings`]:
//!
//! | where        | spelling                              |
//! |--------------|---------------------------------------|
//! | config file  | `[web] listen_address = ":8765"`      |
//! | environment  | `PMOAS_WEB_LISTEN_ADDRESS=:8765`      |
//! | command line | `--web.listen-address :8765`          |
//!
//! Precedence, lowest first: built-in defaults, `--config.file` (TOML), the
//! environment, the command line. The defaults are complete: the exporter
//! runs with no file at all. `pmoas.example.toml` beside this crate lists
//! every key with its default and is checked against the code by a test.

pub mod settings;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format as _, Serialized, Toml};
use pmoas_collectors::{CATALOG, CollectorInfo, CollectorsConfig};
use pmoas_discovery::{DiscoveryConfig, EngineConfig, KubernetesConfig, SidecarConfig, TargetConfig};
use serde::{Deserialize, Deserializer, Serialize};

pub use settings::{SETTINGS, Setting};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Exactly these collectors, instead of the default ones.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "some_list_or_csv")]
    pub collectors: Option<Vec<String>>,
    pub collector: CollectorsConfig,
    pub web: WebConfig,
    pub log: LogConfig,
    pub scrape: ScrapeConfig,
    pub discovery: DiscoveryConfig,
    pub kubernetes: KubernetesConfig,
    pub engine: EngineConfig,
    pub sidecar: SidecarConfig,
    pub target: TargetConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// `host:port` to serve on; `:port` means every address.
    pub listen_address: String,
    /// Path of the metrics page.
    pub telemetry_path: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { listen_address: ":8765".into(), telemetry_path: "/metrics".into() }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScrapeConfig {
    /// Longest a scrape waits for its collectors; Prometheus's own
    /// X-Prometheus-Scrape-Timeout-Seconds lowers it further.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig { timeout: Duration::from_secs(10) }
    }
}

/// A present `collectors` key is a list (possibly given as "a,b"); an
/// absent one means the defaults.
fn some_list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    pmoas_discovery::target::list_or_csv(d).map(Some)
}

/// A configuration that cannot be used, naming what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{key}: {reason}")]
    Key { key: &'static str, reason: String },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        // One line per problem, each naming its key and source.
        ConfigError::Invalid(e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
    }
}

/// Values given on the command line, as (dotted key, raw value).
pub type Overrides = Vec<(&'static str, String)>;

impl Config {
    /// Loads defaults <- file <- environment <- command line, then validates.
    pub fn load(file: Option<&Path>, env: &[(String, String)], overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File { path: path.into(), reason: "no such file".into() });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        for given in env_settings(env) {
            figment = figment.merge(given);
        }
        for (key, raw) in overrides {
            let flag = settings::find(key).map(|s| s.flag()).unwrap_or_else(|| key.to_string());
            figment = figment.merge(Given { key, raw: raw.clone(), source: format!("command-line flag {flag}") });
        }
        let config: Config = figment.extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.enabled_collectors()?;
        self.listen_address()?;
        let path = &self.web.telemetry_path;
        if !path.starts_with('/') || path == "/" || path == "/healthz" || path == "/readyz" {
            return Err(ConfigError::Key {
                key: "web.telemetry_path",
                reason: format!(
                    "`{path}` must be a path of its own starting with `/` (not `/`, `/healthz` or `/readyz`)"
                ),
            });
        }
        if self.scrape.timeout.is_zero() {
            return Err(ConfigError::Key { key: "scrape.timeout", reason: "must be more than 0s".into() });
        }
        pmoas_discovery::Classifier::new(&self.sidecar)
            .map_err(|reason| ConfigError::Key { key: "sidecar.rules", reason })?;
        pmoas_discovery::Targets::new(&self.target).map_err(|reason| ConfigError::Key { key: "target", reason })?;
        let socket = &self.collector.socket;
        for (key, v) in [
            ("collector.socket.max_tracked_connections", socket.max_tracked_connections),
            ("collector.socket.max_series", socket.max_series),
            ("collector.cgroup.max_cgroups", self.collector.cgroup.max_cgroups),
        ] {
            if !(64..=1 << 24).contains(&v) {
                return Err(ConfigError::Key { key, reason: format!("{v} is outside 64..=16777216") });
            }
        }
        Ok(())
    }

    /// The collectors to run: the list (or the defaults, or none with
    /// `collector.disable_defaults`), then each `collector.<name>.enabled`.
    pub fn enabled_collectors(&self) -> Result<Vec<&'static CollectorInfo>, ConfigError> {
        let mut names: Vec<&'static str> = match &self.collectors {
            Some(list) => list
                .iter()
                .map(|n| pmoas_collectors::info(n).map(|i| i.name))
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::Key { key: "collectors", reason: e.to_string() })?,
            None if self.collector.disable_defaults => Vec::new(),
            None => pmoas_collectors::default_collectors(),
        };
        for info in CATALOG {
            match self.collector.enabled_override(info.name) {
                Some(true) if !names.contains(&info.name) => names.push(info.name),
                Some(false) => names.retain(|n| *n != info.name),
                _ => {}
            }
        }
        names.dedup();
        Ok(CATALOG.iter().filter(|c| names.contains(&c.name)).collect())
    }

    /// `web.listen_address` as a socket address (`:port` = every IPv4 address).
    pub fn listen_address(&self) -> Result<SocketAddr, ConfigError> {
        let raw = self.web.listen_address.trim();
        let parsed = match raw.strip_prefix(':') {
            Some(port) => port.parse::<u16>().map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p)).ok(),
            None => raw.parse::<SocketAddr>().ok(),
        };
        parsed.ok_or_else(|| ConfigError::Key {
            key: "web.listen_address",
            reason: format!("`{raw}` is not host:port, [v6]:port or :port"),
        })
    }

    /// What discovery is configured by.
    pub fn discovery_settings(&self) -> pmoas_discovery::Settings {
        pmoas_discovery::Settings {
            discovery: self.discovery.clone(),
            kubernetes: self.kubernetes.clone(),
            engine: self.engine.clone(),
            sidecar: self.sidecar.clone(),
            target: self.target.clone(),
        }
    }

    /// The effective configuration as TOML (for `--config.check`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// One setting given as text, from a named source: an environment
/// variable or a command-line flag. Errors then say which one was wrong.
struct Given {
    key: &'static str,
    raw: String,
    source: String,
}

impl figment::Provider for Given {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.source.clone())
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let value: figment::value::Value = self.raw.parse().expect("infallible");
        let dict = figment::util::nest(self.key, value).into_dict().expect("nest returns a dict");
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// PMOAS_* variables of known settings; anything else with the prefix (a
/// test's PMOAS_REQUIRE_BPF, say) is left alone.
fn env_settings(env: &[(String, String)]) -> Vec<Given> {
    settings::all()
        .filter_map(|s| {
            let var = s.env_var();
            let (_, raw) = env.iter().find(|(name, _)| *name == var)?;
            Some(Given { key: s.key, raw: raw.clone(), source: format!("environment variable {var}") })
        })
        .collect()
}

#[cfg(test)]
mod tests;
