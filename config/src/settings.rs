//! The table of settings: from it come the command-line flags, the
//! environment variables and the `--help` text. A test checks that it names
//! every key of [`crate::Config`] and nothing else.

use std::sync::OnceLock;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Dotted TOML key, e.g. `web.listen_address`.
    pub key: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// A second, shorter flag (`--kubeconfig`).
    pub alias: Option<&'static str>,
}

impl Setting {
    const fn value(key: &'static str, value_name: &'static str, help: &'static str) -> Setting {
        Setting { key, value_name, help, kind: Kind::Value, alias: None }
    }

    const fn repeated(
        key: &'static str,
        value_name: &'static str,
        separator: &'static str,
        help: &'static str,
    ) -> Setting {
        Setting { key, value_name, help, kind: Kind::Repeated(separator), alias: None }
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
    },
    Setting::value(
        "collector.socket.max_tracked_connections",
        "N",
        "Open TCP connections tracked at once, node-wide; beyond it bytes and lifetimes of new connections are lost (and counted)",
    ),
    Setting::value(
        "collector.socket.max_series",
        "N",
        "(workload, peer) pairs kept in the kernel's counter and histogram maps",
    ),
    Setting::value(
        "collector.socket.local_address_refresh",
        "DURATION",
        "How often the addresses of the node and its pods are re-read (peer=node vs remote)",
    ),
    Setting::value(
        "collector.cgroup.max_cgroups",
        "N",
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
    Setting::value("log.level", "LEVEL", "Log level: error, warn, info, debug or trace"),
    Setting::value("log.format", "FORMAT", "Log format: text or json"),
    Setting::value(
        "scrape.timeout",
        "DURATION",
        "Longest a scrape waits for its collectors (Prometheus's scrape timeout header lowers it)",
    ),
    Setting::value("discovery.procfs", "PATH", "The host's /proc (a DaemonSet mounts it at e.g. /host/proc)"),
    Setting::value("discovery.cgroup2", "PATH", "The cgroup v2 mount; found in /proc/self/mountinfo when unset"),
    Setting::value(
        "discovery.grace_period",
        "DURATION",
        "How long the series of a vanished workload keep being served",
    ),
    Setting::value("discovery.rescan_interval", "DURATION", "How often the cgroup tree is rescanned for containers"),
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
    Setting::value("engine.poll_interval", "DURATION", "How often the engine's container list is read"),
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
        });
        which.into_iter().cloned().chain(toggles).chain(rest.into_iter().cloned()).collect()
    })
    .iter()
}

/// The setting with this dotted key.
pub fn find(key: &str) -> Option<&'static Setting> {
    all().find(|s| s.key == key)
}
