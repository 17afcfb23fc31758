//! The table of settings: from it come the command-line flags, the
//! environment variables and the `--help` text. The exporter's own settings
//! are here; each collector's come from its module
//! (`pmoas_collectors::CollectorSpec::settings`). A test checks that
//! together they name every key of [`crate::Config`] and nothing else.

use std::sync::OnceLock;
use std::time::Duration;

pub use pmoas_collectors::setting::{Bounds, Kind, Setting};
use pmoas_collectors::{CATALOG, SPECS};

const HOUR: Duration = Duration::from_secs(3600);

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
    Setting::value(
        "web.listen_address",
        "ADDR",
        "Address to serve on: host:port, [v6]:port, or :port for every address",
    ),
    Setting::value("web.telemetry_path", "PATH", "Path of the metrics page"),
    Setting {
        key: "web.config_file",
        value_name: "PATH",
        help: "TLS and basic auth (exporter-toolkit YAML: tls_server_config, basic_auth_users) for every endpoint but /healthz",
        kind: Kind::Value,
        // The exporter-toolkit's own flag name, as node_exporter spells it.
        alias: Some("web.config.file"),
        bounds: None,
    },
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
    Setting::value(
        "otlp.endpoint",
        "URL",
        "Export traces over OTLP to this receiver, e.g. http://jaeger:4317 (grpc) or http://jaeger:4318 (http/protobuf); empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, else no export",
    ),
    Setting::value(
        "otlp.protocol",
        "grpc|http/protobuf",
        "OTLP transport; empty: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL, else grpc",
    ),
    Setting::duration(
        "otlp.timeout",
        Duration::from_millis(100),
        Duration::from_secs(300),
        "Longest one OTLP export request may take; left at 10s, OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT replaces it",
    ),
    Setting::value(
        "otlp.headers",
        "KEY=VALUE,...",
        "Extra headers of OTLP requests, values percent-encoded; empty: OTEL_EXPORTER_OTLP_(TRACES_)HEADERS",
    ),
    Setting::count(
        "otlp.queue_size",
        1,
        1_000_000,
        "Spans waiting for export at most; a trace that does not fit is dropped (and counted)",
    ),
    Setting::count("otlp.batch_size", 1, 100_000, "Spans sent in one OTLP export request at most"),
    Setting::duration(
        "otlp.batch_delay",
        Duration::from_millis(10),
        Duration::from_secs(60),
        "Longest a span waits for its batch to fill before it is sent anyway",
    ),
    Setting::value(
        "otlp.metrics_endpoint",
        "URL",
        "Also send the metrics over OTLP to this receiver every otlp.metrics_interval (protocol, headers and timeout as for traces); empty: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, else none",
    ),
    Setting::duration(
        "otlp.metrics_interval",
        Duration::from_secs(1),
        Duration::from_secs(3600),
        "Time between two metric exports over OTLP",
    ),
    Setting::value(
        "push.gateway_url",
        "URL",
        "Also push the metrics to this Prometheus Pushgateway (http://host:port[/prefix]); the group is deleted on a clean shutdown",
    ),
    Setting::duration("push.interval", Duration::from_secs(1), Duration::from_secs(3600), "Time between two pushes"),
    Setting::value("push.job", "NAME", "The job grouping label of the pushed metrics"),
    Setting::value(
        "push.instance",
        "NAME",
        "The instance grouping label of the pushed metrics; empty: the node's name",
    ),
];

/// Every setting, with one `collector.<name>.enabled` toggle per collector.
pub fn all() -> impl Iterator<Item = &'static Setting> {
    static ALL: OnceLock<Vec<Setting>> = OnceLock::new();
    ALL.get_or_init(|| {
        // Which collectors first (the list, the switch, the toggles), then
        // each collector's own settings as its module declares them, then
        // everything else in table order.
        let (which, rest): (Vec<&Setting>, Vec<&Setting>) =
            SETTINGS.iter().partition(|s| s.key == "collectors" || s.key == "collector.disable_defaults");
        let own = SPECS.iter().flat_map(|c| c.settings.iter());
        let toggles = CATALOG.iter().map(|c| Setting {
            key: Box::leak(format!("collector.{}.enabled", c.name).into_boxed_str()),
            value_name: "",
            help: c.help,
            kind: Kind::CollectorToggle,
            // The seeds' flag for turning socket-redirect acceleration on.
            alias: (c.name == "sockops").then_some("with-sockops"),
            bounds: None,
        });
        which.into_iter().cloned().chain(toggles).chain(own.cloned()).chain(rest.into_iter().cloned()).collect()
    })
    .iter()
}

/// The setting with this dotted key.
pub fn find(key: &str) -> Option<&'static Setting> {
    all().find(|s| s.key == key)
}
