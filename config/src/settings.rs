//! The table of settings: from it come the command-line flags, the
//! environment variables and the `--help` text. A test checks that it names
//! every key of [`crate::Config`] and nothing else.

use std::sync::OnceLock;
use std::time::Duration;

use humantime_serde::re::humantime;

use pmoas_collectors::CATALOG;

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
/// [`crate::Config::validate`] checks them all in one place: a zero or
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
    const fn value(key: &'static str, value_name: &'static str, help: &'static str) -> Setting {
        Setting { key, value_name, help, kind: Kind::Value, alias: None, bounds: None }
    }

    /// A count or size within `min..=max`.
    const fn count(key: &'static str, min: u64, max: u64, help: &'static str) -> Setting {
        Setting { bounds: Some(Bounds::Count(min, max)), ..Setting::value(key, "N", help) }
    }

    /// A duration within `min..=max`.
    const fn duration(key: &'static str, min: Duration, max: Duration, help: &'static str) -> Setting {
        Setting { bounds: Some(Bounds::Duration(min, max)), ..Setting::value(key, "DURATION", help) }
    }

    const fn repeated(
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

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
/// Kernel maps larger than this cost more memory than any node needs.
const MAX_MAP_ENTRIES: u64 = 1 << 24;

/// Settings every build has; collector toggles are added by [`all`].
pub const SETTINGS: &[Setting] = &[
    Setting::value(
        "collectors",
        "NAMES",
        "Run exactly these collectors (comma-separated), instead of the default ones",
    ),
    Setting {
        key: "collector.disable_defaults",
        value_name: "",
        help: "Start from no collector; add the wanted ones with --collector.<name>",
        kind: Kind::Switch,
        alias: None,
        bounds: None,
    },
    Setting::count(
        "collector.socket.max_tracked_connections",
        64,
        MAX_MAP_ENTRIES,
        "Open TCP connections tracked at once, node-wide; beyond it bytes and lifetimes of new connections are lost (and counted)",
    ),
    Setting::count(
        "collector.socket.max_series",
        64,
        MAX_MAP_ENTRIES,
        "(workload, peer) pairs kept in the kernel's counter and histogram maps",
    ),
    Setting::duration(
        "collector.socket.local_address_refresh",
        SECOND,
        HOUR,
        "How often the addresses of the node and its pods are re-read (peer=node vs remote)",
    ),
    Setting::count(
        "collector.cgroup.max_cgroups",
        64,
        MAX_MAP_ENTRIES,
        "cgroups with kernel-side network, block I/O and OOM counters, node-wide; beyond it new cgroups are not counted (and that is counted)",
    ),
    Setting::value(
        "collector.cgroup.network_per_container",
        "BOOL",
        "Count network bytes per container with cgroup_skb programs on the cgroup v2 root (true), or not (false)",
    ),
    Setting::value(
        "web.listen_address",
        "ADDR",
        "Address to serve on: host:port, [v6]:port, or :port for every address",
    ),
    Setting::value("web.telemetry_path", "PATH", "Path of the metrics page"),
    Setting::count(
        "web.max_requests",
        1,
        10_000,
        "Scrapes of the metrics page answered in parallel; more get 503 at once",
    ),
    Setting::count(
        "web.max_connections",
        2,
        1_000_000,
        "Open client connections, lowered to fit the open file limit; at the cap the connection idle longest is closed to make room",
    ),
    Setting::value("log.level", "LEVEL", "Log level: error, warn, info, debug or trace"),
    Setting::value("log.format", "FORMAT", "Log format: text or json"),
    Setting::duration(
        "scrape.timeout",
        Duration::from_millis(100),
        Duration::from_secs(600),
        "Longest a scrape waits for its collectors (Prometheus's scrape timeout header lowers it)",
    ),
    Setting::value("discovery.procfs", "PATH", "The host's /proc (a DaemonSet mounts it at e.g. /host/proc)"),
    Setting::value("discovery.cgroup2", "PATH", "The cgroup v2 mount; found in /proc/self/mountinfo when unset"),
    Setting::duration(
        "discovery.grace_period",
        Duration::ZERO,
        Duration::from_secs(24 * 3600),
        "How long the series of a vanished workload keep being served",
    ),
    Setting::duration(
        "discovery.rescan_interval",
        Duration::from_millis(100),
        HOUR,
        "How often the cgroup tree is rescanned for containers",
    ),
    Setting::value(
        "kubernetes.enabled",
        "auto|true|false",
        "Name workloads from the Kubernetes API: auto = when in a cluster or a kubeconfig is found",
    ),
    Setting {
        key: "kubernetes.kubeconfig",
        value_name: "PATH",
        help: "kubeconfig to reach the API with (default: in-cluster, $KUBECONFIG, ~/.kube/config)",
        kind: Kind::Value,
        alias: Some("kubeconfig"),
        bounds: None,
    },
    Setting::value(
        "kubernetes.node_name",
        "NAME",
        "This node's name, to watch its pods only (default: $NODE_NAME, else the host name)",
    ),
    Setting::value(
        "engine.enabled",
        "auto|true|false",
        "Name containers through the Docker-compatible API of Docker or Podman: auto = when a socket is found",
    ),
    Setting::value(
        "engine.socket",
        "PATH",
        "Engine API socket (default: /run/podman/podman.sock, /var/run/docker.sock, /run/docker.sock)",
    ),
    Setting::duration(
        "engine.poll_interval",
        Duration::from_millis(100),
        HOUR,
        "How often the engine's container list is read",
    ),
    Setting::value(
        "sidecar.mode",
        "auto|rules|none",
        "Sidecar classification: auto = custom rules, built-in meshes, process names; rules = custom rules only; none = no sidecars",
    ),
    Setting::repeated(
        "sidecar.rules",
        "RULE",
        ";",
        "Custom sidecar rule KIND=FIELD:REGEX[,FIELD:REGEX...], FIELD one of container, image, process, pod_label, pod_annotation; repeatable, first match wins",
    ),
    Setting::repeated(
        "target.namespace",
        "NAMES",
        ",",
        "Watch only pods in these namespaces (comma-separated, repeatable)",
    ),
    Setting::repeated(
        "target.pod",
        "PATTERNS",
        ",",
        "Watch only pods whose name matches one of these anchored regexes",
    ),
    Setting::value(
        "target.pod_label",
        "SELECTOR",
        "Watch only pods whose labels match this selector (Kubernetes syntax: app=web,tier in (a,b),!canary)",
    ),
];

/// Every setting, with one `collector.<name>.enabled` toggle per collector.
pub fn all() -> impl Iterator<Item = &'static Setting> {
    static ALL: OnceLock<Vec<Setting>> = OnceLock::new();
    ALL.get_or_init(|| {
        // Which collectors first (the list, the switch, the toggles), then
        // everything else in table order.
        let (which, rest): (Vec<&Setting>, Vec<&Setting>) =
            SETTINGS.iter().partition(|s| s.key == "collectors" || s.key == "collector.disable_defaults");
        let toggles = CATALOG.iter().map(|c| Setting {
            key: Box::leak(format!("collector.{}.enabled", c.name).into_boxed_str()),
            value_name: "",
            help: c.help,
            kind: Kind::CollectorToggle,
            alias: None,
            bounds: None,
        });
        which.into_iter().cloned().chain(toggles).chain(rest.into_iter().cloned()).collect()
    })
    .iter()
}

/// The setting with this dotted key.
pub fn find(key: &str) -> Option<&'static Setting> {
    all().find(|s| s.key == key)
}
