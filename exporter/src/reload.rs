//! SIGHUP: read the configuration again, from the same file, environment
//! and flags, and apply what can change while running, as Prometheus does.
//!
//! Applied at once: sidecar rules (`sidecar.*`), target selection
//! (`target.*`, unless it is switched on or off), `web.telemetry_path` and
//! `scrape.timeout`. Anything
//! else (collectors, their map sizes, the listen address, discovery
//! sources, logging) is logged as needing a restart and keeps its running
//! value. A configuration that does not load is logged and changes nothing.
//! `pmoas_config_last_reload_successful` and
//! `pmoas_config_last_reload_success_timestamp_seconds` say how the last one went.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use pmoas_config::{Config, Overrides};

/// Dotted keys (or key prefixes ending in `.`) that apply without a restart.
const RELOADABLE: &[&str] = &["sidecar.", "target.", "web.telemetry_path", "scrape.timeout"];

/// Where the configuration came from, and what is in force now.
pub struct Reloader {
    file: Option<PathBuf>,
    overrides: Overrides,
    current: Mutex<Config>,
    last_ok: AtomicBool,
    last_success: AtomicU64,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Keys now in force.
    pub applied: Vec<String>,
    /// Keys (or reasons) that wait for a restart.
    pub needs_restart: Vec<String>,
}

impl Reloader {
    pub fn new(file: Option<PathBuf>, overrides: Overrides, current: Config) -> Reloader {
        Reloader {
            file,
            overrides,
            current: Mutex::new(current),
            last_ok: AtomicBool::new(true),
            last_success: AtomicU64::new(now()),
        }
    }

    /// The configuration in force (reloaded parts included).
    #[cfg(test)]
    pub fn current(&self) -> Config {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the configuration again and calls `apply` with the new one
    /// and the reloadable keys that changed. `apply` may refuse (an error)
    /// or return more that needs a restart.
    pub fn reload(
        &self,
        apply: impl FnOnce(&Config, &[String]) -> Result<Vec<String>, String>,
    ) -> Result<Outcome, String> {
        let result = self.try_reload(apply);
        self.last_ok.store(result.is_ok(), Ordering::Relaxed);
        if result.is_ok() {
            self.last_success.store(now(), Ordering::Relaxed);
        }
        result
    }

    fn try_reload(
        &self,
        apply: impl FnOnce(&Config, &[String]) -> Result<Vec<String>, String>,
    ) -> Result<Outcome, String> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let new = Config::load(self.file.as_deref(), &env, &self.overrides).map_err(|e| e.to_string())?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let changed = changed_keys(&current, &new);
        let (applied, restart): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|k| RELOADABLE.iter().any(|r| k == r || (r.ends_with('.') && k.starts_with(r))));
        let mut needs_restart = restart;
        needs_restart.extend(apply(&new, &applied)?);
        // Keep the running value of what did not apply, so that the next
        // reload reports it again rather than forgetting it.
        let mut merged = new;
        merged.collectors = current.collectors.clone();
        merged.collector = current.collector.clone();
        merged.web.listen_address = current.web.listen_address.clone();
        merged.web.max_connections = current.web.max_connections;
        merged.web.max_requests = current.web.max_requests;
        merged.log = current.log.clone();
        merged.discovery = current.discovery.clone();
        merged.kubernetes = current.kubernetes.clone();
        merged.otlp = current.otlp.clone();
        merged.engine = current.engine.clone();
        if needs_restart.iter().any(|r| r.starts_with("target selection switched")) {
            merged.target = current.target.clone();
        }
        *current = merged;
        Ok(Outcome { applied, needs_restart })
    }

    /// (was the last reload successful, when the last successful one was).
    pub fn status(&self) -> (bool, u64) {
        (self.last_ok.load(Ordering::Relaxed), self.last_success.load(Ordering::Relaxed))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Dotted keys whose value differs between `a` and `b`.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x.get(k), y.get(k), out);
                }
            }
            (x, y) if x != y => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (toml::Value::try_from(a), toml::Value::try_from(b)) else { return vec!["?".into()] };
    let mut out = Vec::new();
    walk("", Some(&a), Some(&b), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(overrides: &[(&'static str, &str)]) -> Config {
        let o: Overrides = overrides.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Config::load(None, &[], &o).unwrap()
    }

    #[test]
    fn changed_keys_are_dotted_leaves() {
        let a = config(&[]);
        let b = config(&[("web.listen_address", ":1"), ("target.namespace", "shop"), ("scrape.timeout", "3s")]);
        assert_eq!(changed_keys(&a, &b), vec!["scrape.timeout", "target.namespace", "web.listen_address"]);
        assert!(changed_keys(&a, &a).is_empty());
    }

    #[test]
    fn reload_applies_what_it_can_and_keeps_the_rest() {
        let file = std::env::temp_dir().join(format!("pmoas-reload-test-{}.toml", std::process::id()));
        std::fs::write(&file, "[scrape]\ntimeout = \"5s\"\n").unwrap();
        let start = Config::load(Some(&file), &[], &vec![]).unwrap();
        let r = Reloader::new(Some(file.clone()), vec![], start);

        std::fs::write(
            &file,
            "[scrape]\ntimeout = \"3s\"\n[web]\nlisten_address = \":1\"\n[sidecar]\nmode = \"none\"\n",
        )
        .unwrap();
        let mut seen = Vec::new();
        let out = r
            .reload(|c, keys| {
                seen = keys.to_vec();
                assert_eq!(c.scrape.timeout, std::time::Duration::from_secs(3));
                Ok(vec![])
            })
            .unwrap();
        assert_eq!(seen, vec!["scrape.timeout", "sidecar.mode"]);
        assert_eq!(out.needs_restart, vec!["web.listen_address"]);
        assert_eq!(r.current().web.listen_address, ":8765", "the running value stays");
        assert_eq!(r.current().scrape.timeout, std::time::Duration::from_secs(3));
        assert!(r.status().0);

        // A broken file changes nothing and says so.
        std::fs::write(&file, "[scrape]\ntimeout = \"0s\"\n").unwrap();
        let err = r.reload(|_, _| Ok(vec![])).unwrap_err();
        assert!(err.contains("scrape.timeout"), "{err}");
        assert!(!r.status().0);
        assert_eq!(r.current().scrape.timeout, std::time::Duration::from_secs(3));
        let _ = std::fs::remove_file(&file);
    }
}
