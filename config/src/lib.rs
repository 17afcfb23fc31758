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

pub use settings::{Bounds, SETTINGS, Setting};

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
    pub otlp: pmoas_otlp::OtlpConfig,
    pub push: PushConfig,
}

/// Pushing the metrics to a Prometheus Pushgateway, for runs Prometheus
/// cannot scrape.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// `http://host:port[/prefix]` of the Pushgateway; empty: no push.
    pub gateway_url: String,
    /// Time between two pushes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The `job` grouping label.
    pub job: String,
    /// The `instance` grouping label; empty: the node's name.
    pub instance: String,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            gateway_url: String::new(),
            interval: Duration::from_secs(15),
            job: "pmoas".into(),
            instance: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// `host:port` to serve on; `:port` means every address.
    pub listen_address: String,
    /// Path of the metrics page.
    pub telemetry_path: String,
    /// Scrapes of the metrics page answered in parallel (1..=); more get
    /// 503 at once, like node_exporter's `--web.max-requests`.
    pub max_requests: usize,
    /// Open client connections (1..=), lowered at start to fit the open file
    /// limit; at the cap the connection idle longest is closed to make room.
    pub max_connections: usize,
    /// TLS and basic authentication, exporter-toolkit format; empty: none.
    pub config_file: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen_address: ":8765".into(),
            telemetry_path: "/metrics".into(),
            max_requests: 40,
            max_connections: 512,
            config_file: String::new(),
        }
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
        ConfigError::Invalid(e.into_iter().map(|e| describe(&e)).collect::<Vec<_>>().join("\n"))
    }
}

/// One line per problem: the key as the user wrote it (with its flag),
/// what is wrong, and where the value came from. figment's own text puts
/// its profile name before the key (`default.web.listen_address`), which
/// is no key a user ever typed.
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let mut out = match settings::find(&key) {
        Some(s) if !key.is_empty() => format!("{key} ({}): {}", s.flag(), e.kind),
        _ if !key.is_empty() => format!("{key}: {}", e.kind),
        _ => e.kind.to_string(),
    };
    if let Some(md) = &e.metadata {
        match &md.source {
            Some(src) => out.push_str(&format!(" (in {} {src})", md.name)),
            None => out.push_str(&format!(" (from {})", md.name)),
        }
    }
    out
}

/// PMOAS_* variables that are not settings but are read all the same.
const OTHER_VARIABLES: &[&str] = &[
    "PMOAS_CONFIG_FILE",
    // Set by the build script for the binary; cargo passes them on to tests.
    "PMOAS_REVISION",
    "PMOAS_RUSTC",
    "PMOAS_TARGET",
    // The test suite's.
    "PMOAS_REQUIRE_BPF",
    "PMOAS_SKIP_LOG",
    "PMOAS_ENVOY",
];

/// Warnings for PMOAS_* variables that name no setting: a typo there would
/// otherwise be ignored silently, while the same typo in TOML is refused.
pub fn unknown_env_vars(env: &[(String, String)]) -> Vec<String> {
    let known: Vec<String> = settings::all().map(|s| s.env_var()).collect();
    env.iter()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with("PMOAS_") && !known.contains(n) && !OTHER_VARIABLES.contains(&n.as_str()))
        .map(|n| {
            let nearest = known.iter().min_by_key(|k| edit_distance(k, n)).filter(|k| edit_distance(k, n) <= 3);
            match nearest {
                Some(k) => format!("environment variable {n} is not a pmoas setting and is ignored; did you mean {k}?"),
                None => format!("environment variable {n} is not a pmoas setting and is ignored (see --help)"),
            }
        })
        .collect()
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Values given on the command line, as (dotted key, raw value).
pub type Overrides = Vec<(&'static str, String)>;

impl Config {
    /// Loads defaults <- file <- environment <- command line, then validates.
    pub fn load(file: Option<&Path>, env: &[(String, String)], overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // A character device such as /dev/null reads as an empty file.
            let reason = match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("no such file".to_string()),
                Err(e) => Some(e.to_string()),
                Ok(m) if m.is_dir() => Some("is a directory, not a TOML file".to_string()),
                Ok(_) => None,
            };
            if let Some(reason) = reason {
                return Err(ConfigError::File { path: path.into(), reason });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let given = env_settings(env).into_iter().chain(overrides.iter().map(|(key, raw)| {
            let flag = settings::find(key).map(|s| s.flag()).unwrap_or_else(|| key.to_string());
            Given { key, raw: raw.clone(), source: format!("command-line flag {flag}") }
        }));
        let given: Vec<Given> = given.collect();
        for g in &given {
            g.check_form()?;
        }
        for g in given {
            figment = figment.merge(g);
        }
        let config: Config = figment.extract()?;
        config.validate()?;
        // The OTLP destination also depends on the standard OTEL_* variables.
        config.otlp.resolve(env).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.collectors.as_ref().is_some_and(|c| c.iter().all(|n| n.trim().is_empty())) {
            return Err(ConfigError::Key {
                key: "collectors",
                reason: "the list is empty; name at least one collector, or use --collector.disable-defaults \
                         to run with none on purpose"
                    .into(),
            });
        }
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
        pmoas_discovery::Classifier::new(&self.sidecar)
            .map_err(|reason| ConfigError::Key { key: "sidecar.rules", reason })?;
        if !self.push.gateway_url.is_empty() && !self.push.gateway_url.starts_with("http://") {
            return Err(ConfigError::Key {
                key: "push.gateway_url",
                reason: format!(
                    "`{}` is not an http:// URL (http://host:port, optionally with a path prefix; https is not \
                     supported: put a TLS proxy beside the Pushgateway)",
                    self.push.gateway_url
                ),
            });
        }
        if self.push.job.is_empty() {
            return Err(ConfigError::Key { key: "push.job", reason: "the job label may not be empty".into() });
        }
        pmoas_discovery::Targets::new(&self.target).map_err(|reason| ConfigError::Key { key: "target", reason })?;
        pmoas_collectors::http::routes::Routes::new(&self.collector.http.routes)
            .map_err(|reason| ConfigError::Key { key: "collector.http.routes", reason })?;
        self.check_bounds()
    }

    /// Every number and duration against the bounds its setting declares;
    /// all violations at once, each naming its key and flag.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        let values = toml::Value::try_from(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut problems = Vec::new();
        for s in settings::all() {
            let (Some(bounds), Some(value)) = (s.bounds, lookup(&values, s.key)) else { continue };
            if let Err(why) = bounds.check(&value.to_string()) {
                problems.push(format!("{} ({}): {value} {why}", s.key, s.flag()));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems.join("\n"))) }
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

    /// `web.listen_address` as a socket address (`:port` = every IPv4
    /// address; a host name such as `localhost` = its first address).
    pub fn listen_address(&self) -> Result<SocketAddr, ConfigError> {
        let raw = self.web.listen_address.trim();
        let invalid = |why: String| ConfigError::Key { key: "web.listen_address", reason: format!("`{raw}` {why}") };
        if let Some(port) = raw.strip_prefix(':') {
            return port
                .parse::<u16>()
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p))
                .map_err(|_| invalid("is not host:port, [v6]:port or :port".into()));
        }
        if let Ok(addr) = raw.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let Some((host, port)) = raw.rsplit_once(':').filter(|(h, _)| !h.is_empty() && !h.contains(':')) else {
            return Err(invalid("is not host:port, [v6]:port or :port".into()));
        };
        let port: u16 = port.parse().map_err(|_| invalid(format!("has no valid port (`{port}`)")))?;
        let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| invalid(format!("cannot be resolved: {e}")))?
            .collect::<Vec<_>>();
        // localhost resolves to ::1 and 127.0.0.1: prefer IPv4, as Prometheus does.
        addrs.sort_by_key(|a| !a.is_ipv4());
        addrs.first().copied().ok_or_else(|| invalid(format!("`{host}` resolves to no address")))
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

/// First and last line of the part of `pmoas.example.toml` that is
/// generated from the collectors' own declarations.
pub const EXAMPLE_BEGIN: &str =
    "# ---- collectors: generated from each collector's SPEC (PMOAS_BLESS=1 cargo test -p pmoas-config) ----";
pub const EXAMPLE_END: &str = "# ---- end of collectors ----";

/// The `[collector.<name>]` sections of the example file: each
/// collector's help, its `enabled` toggle and every setting with its help,
/// range and default, as the collector's module declares them.
pub fn example_collector_sections() -> String {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut out = String::new();
    for spec in pmoas_collectors::SPECS {
        let name = spec.info.name;
        out.push_str(&format!("\n[collector.{name}]\n"));
        out.push_str(&comment(&format!(
            "{} ({} by default).",
            spec.info.help,
            if spec.info.default_enabled { "on" } else { "off" }
        )));
        out.push_str(&format!("# enabled = {}\n", spec.info.default_enabled));
        for s in spec.settings {
            let range = s.bounds.map(|b| format!(" [range: {}]", b.describe())).unwrap_or_default();
            out.push_str(&comment(&format!("{}.{range}", s.help)));
            let leaf = s.key.rsplit('.').next().unwrap_or(s.key);
            match lookup(&defaults, s.key) {
                Some(v) => out.push_str(&format!("{leaf} = {v}\n")),
                None => out.push_str(&format!("# {leaf} =\n")),
            }
        }
    }
    out
}

/// `text` as `# ` comment lines of at most 80 columns.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 80 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The value at a dotted key, if set.
fn lookup<'a>(values: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(values, |v, part| v.get(part))
}

/// One setting given as text, from a named source: an environment
/// variable or a command-line flag. Errors then say which one was wrong.
struct Given {
    key: &'static str,
    raw: String,
    source: String,
}

impl Given {
    /// A flag's or variable's number or duration, checked as text by the
    /// same `Bounds::check` as the file's values: `-5s` or a count too big
    /// for its field get the range here, not a serde message.
    fn check_form(&self) -> Result<(), ConfigError> {
        let Some(s) = settings::find(self.key) else { return Ok(()) };
        let Some(bounds) = s.bounds else { return Ok(()) };
        bounds.check(&self.raw).map_err(|why| ConfigError::Key {
            key: s.key,
            reason: format!("`{}` from {} {why}", self.raw, self.source),
        })
    }
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
