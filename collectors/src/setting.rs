//! One setting: its dotted key, how it is given on the command line, its
//! help and, for numbers and durations, its bounds. The exporter's own
//! settings live in `pmoas-config`; each collector declares its
//! `collector.<name>.*` settings in its own module ([`crate::CollectorSpec`]),
//! and flags, variables, `--help`, the example file and the range checks
//! all follow from these declarations.

use std::time::Duration;

use humantime_serde::re::humantime;

/// Kernel maps larger than this cost more memory than any node needs: the
/// upper bound of every map-size setting.
pub const MAX_MAP_ENTRIES: u64 = 1 << 24;

/// How a setting is given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `--key VALUE`
    Value,
    /// `--key` alone sets it to true.
    Switch,
    /// `collector.<name>.enabled`: `--collector.<name>` / `--no-collector.<name>`.
    CollectorToggle,
    /// `--key VALUE`, repeatable; the values are joined with this separator.
    Repeated(&'static str),
}

/// The values a number or duration setting may take, both ends included.
/// Every such setting has one (a test checks it), and
/// `pmoas_config::Config::validate` checks them all in one place: a zero or
/// absurd value is refused at start-up and by `--config.check`, never met
/// at run time as a busy loop or a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bounds {
    Duration(Duration, Duration),
    Count(u64, u64),
}

impl Bounds {
    /// `100ms..=1h`, `64..=16777216`.
    pub fn describe(&self) -> String {
        match self {
            Bounds::Duration(lo, hi) => {
                format!("{}..={}", humantime::format_duration(*lo), humantime::format_duration(*hi))
            }
            Bounds::Count(lo, hi) => format!("{lo}..={hi}"),
        }
    }

    /// Whether `raw` (as written in a flag, a variable or the file) is a
    /// value of this kind within the bounds; if not, what is wrong with it.
    pub fn check(&self, raw: &str) -> Result<(), String> {
        let raw = raw.trim().trim_matches('"');
        let inside = match self {
            Bounds::Duration(lo, hi) => match humantime::parse_duration(raw) {
                Ok(d) => (lo..=hi).contains(&&d),
                Err(_) => return Err(format!("is not a duration like 500ms, 5s or 1m (range {})", self.describe())),
            },
            Bounds::Count(lo, hi) => match raw.parse::<u64>() {
                Ok(n) => (lo..=hi).contains(&&n),
                Err(_) => return Err(format!("is not a whole number (range {})", self.describe())),
            },
        };
        if inside { Ok(()) } else { Err(format!("is outside {}", self.describe())) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Dotted TOML key, e.g. `web.listen_address`.
    pub key: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// A second, shorter flag (`--kubeconfig`).
    pub alias: Option<&'static str>,
    /// Allowed values of a number or duration.
    pub bounds: Option<Bounds>,
}

impl Setting {
    pub const fn value(key: &'static str, value_name: &'static str, help: &'static str) -> Setting {
        Setting { key, value_name, help, kind: Kind::Value, alias: None, bounds: None }
    }

    /// A count or size within `min..=max`.
    pub const fn count(key: &'static str, min: u64, max: u64, help: &'static str) -> Setting {
        Setting { bounds: Some(Bounds::Count(min, max)), ..Setting::value(key, "N", help) }
    }

    /// A duration within `min..=max`.
    pub const fn duration(key: &'static str, min: Duration, max: Duration, help: &'static str) -> Setting {
        Setting { bounds: Some(Bounds::Duration(min, max)), ..Setting::value(key, "DURATION", help) }
    }

    pub const fn repeated(
        key: &'static str,
        value_name: &'static str,
        separator: &'static str,
        help: &'static str,
    ) -> Setting {
        Setting { key, value_name, help, kind: Kind::Repeated(separator), alias: None, bounds: None }
    }

    /// `--web.listen-address` (for a toggle: `--collector.socket`).
    pub fn flag(&self) -> String {
        match self.kind {
            Kind::CollectorToggle => format!("--{}", self.key.trim_end_matches(".enabled")),
            _ => format!("--{}", self.key.replace('_', "-")),
        }
    }

    /// The flag without its leading dashes (clap's long name).
    pub fn long(&self) -> String {
        self.flag().trim_start_matches('-').to_string()
    }

    /// `PMOAS_WEB_LISTEN_ADDRESS`.
    pub fn env_var(&self) -> String {
        format!("PMOAS_{}", self.key.replace('.', "_").to_ascii_uppercase())
    }

    /// The `--help` heading it is listed under.
    pub fn heading(&self) -> String {
        if self.kind == Kind::CollectorToggle {
            return "Collectors".into();
        }
        let mut parts = self.key.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("collector"), Some(name), Some(_)) => format!("Collector {name}"),
            (Some("collector") | Some("collectors"), _, _) => "Collectors".into(),
            (Some(section), _, _) => {
                let mut c = section.chars();
                c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
            }
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_check_text_as_users_write_it() {
        let d = Bounds::Duration(Duration::from_millis(100), Duration::from_secs(3600));
        assert_eq!(d.check("5s"), Ok(()));
        assert_eq!(d.check("\"1h\""), Ok(()), "a TOML string as rendered");
        assert_eq!(d.check("0s"), Err("is outside 100ms..=1h".into()));
        assert!(d.check("-5s").unwrap_err().starts_with("is not a duration"));
        let c = Bounds::Count(64, 1 << 24);
        assert_eq!(c.check("64"), Ok(()));
        assert_eq!(c.check("3"), Err("is outside 64..=16777216".into()));
        assert!(c.check("-1").unwrap_err().starts_with("is not a whole number"));
        assert!(c.check("1e300").is_err());
    }
}
