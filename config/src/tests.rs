//! Configuration: defaults, precedence, validation, and the settings table.

use super::*;
use std::collections::BTreeSet;
use std::io::Write;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_need_nothing() {
    let c = Config::load(None, &[], &vec![]).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.listen_address().unwrap().to_string(), "0.0.0.0:8765");
    assert_eq!(c.web.telemetry_path, "/metrics");
    assert_eq!(c.enabled_collectors().unwrap().iter().map(|i| i.name).collect::<Vec<_>>(), vec!["socket", "cgroup"]);
}

#[test]
fn example_file_is_exactly_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pmoas.example.toml");
    let c = Config::load(Some(&path), &[], &vec![]).unwrap();
    assert_eq!(c, Config::default(), "pmoas.example.toml and Config::default() disagree");
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let f =
        file("[web]\nlisten_address = \"127.0.0.1:1111\"\ntelemetry_path = \"/from-file\"\n[log]\nlevel = \"debug\"\n");
    // file only
    let c = Config::load(Some(f.path()), &[], &vec![]).unwrap();
    assert_eq!(c.web.listen_address, "127.0.0.1:1111");
    assert_eq!(c.log.level, LogLevel::Debug);
    // env beats file
    let e = env(&[("PMOAS_WEB_LISTEN_ADDRESS", "127.0.0.1:2222"), ("PMOAS_REQUIRE_BPF", "1")]);
    let c = Config::load(Some(f.path()), &e, &vec![]).unwrap();
    assert_eq!(c.web.listen_address, "127.0.0.1:2222");
    assert_eq!(c.web.telemetry_path, "/from-file", "untouched keys keep the file's value");
    // flags beat env
    let c = Config::load(Some(f.path()), &e, &vec![("web.listen_address", "127.0.0.1:3333".into())]).unwrap();
    assert_eq!(c.web.listen_address, "127.0.0.1:3333");
    assert_eq!(c.log.level, LogLevel::Debug);
}

#[test]
fn typed_values_from_env_and_flags() {
    let e = env(&[("PMOAS_COLLECTOR_SOCKET_MAX_TRACKED_CONNECTIONS", "1024"), ("PMOAS_SCRAPE_TIMEOUT", "3s")]);
    let c = Config::load(None, &e, &vec![("discovery.grace_period", "90s".into())]).unwrap();
    assert_eq!(c.collector.socket.max_tracked_connections, 1024);
    assert_eq!(c.scrape.timeout, Duration::from_secs(3));
    assert_eq!(c.discovery.grace_period, Duration::from_secs(90));
}

#[test]
fn push_settings_from_every_layer_and_their_errors() {
    let e = env(&[("PMOAS_PUSH_GATEWAY_URL", "http://gw:9091"), ("PMOAS_PUSH_INTERVAL", "30s")]);
    let c = Config::load(None, &e, &vec![("push.instance", "node-7".into())]).unwrap();
    assert_eq!(c.push.gateway_url, "http://gw:9091");
    assert_eq!(c.push.interval, Duration::from_secs(30));
    assert_eq!((c.push.job.as_str(), c.push.instance.as_str()), ("pmoas", "node-7"));
    let err = Config::load(None, &[], &vec![("push.gateway_url", "https://gw:9091".into())]).unwrap_err().to_string();
    assert!(err.contains("push.gateway_url") && err.contains("not an http:// URL"), "{err}");
    let err = Config::load(None, &[], &vec![("push.job", "".into())]).unwrap_err().to_string();
    assert!(err.contains("push.job"), "{err}");
    let err = Config::load(None, &[], &vec![("push.interval", "0s".into())]).unwrap_err().to_string();
    assert!(err.contains("push.interval"), "{err}");
}

#[test]
fn collector_selection() {
    let names = |c: &Config| c.enabled_collectors().unwrap().iter().map(|i| i.name).collect::<Vec<_>>();
    let c = Config::load(None, &[], &vec![("collectors", "socket".into())]).unwrap();
    assert_eq!(names(&c), vec!["socket"]);
    let c = Config::load(None, &[], &vec![("collector.disable_defaults", "true".into())]).unwrap();
    assert!(names(&c).is_empty());
    let c = Config::load(
        None,
        &[],
        &vec![("collector.disable_defaults", "true".into()), ("collector.socket.enabled", "true".into())],
    )
    .unwrap();
    assert_eq!(names(&c), vec!["socket"]);
    let c = Config::load(None, &env(&[("PMOAS_COLLECTOR_SOCKET_ENABLED", "false")]), &vec![]).unwrap();
    assert_eq!(names(&c), vec!["cgroup"]);
    let c = Config::load(None, &[], &vec![("collector.cgroup.network_per_container", "false".into())]).unwrap();
    assert!(!c.collector.cgroup.network_per_container);
    let f = file("collectors = [\"socket\"]\n");
    assert_eq!(names(&Config::load(Some(f.path()), &[], &vec![]).unwrap()), vec!["socket"]);
}

#[test]
fn unknown_collector_lists_the_valid_ones() {
    let err = Config::load(None, &[], &vec![("collectors", "socket,nosuch".into())]).unwrap_err().to_string();
    assert!(
        err.contains("collectors")
            && err.contains("`nosuch`")
            && err.contains("valid collectors: socket, cgroup, netstack"),
        "{err}"
    );
}

#[test]
fn bad_values_name_their_key_and_source() {
    let f = file("[web]\nlisten_addres = \":1\"\n");
    let err = Config::load(Some(f.path()), &[], &vec![]).unwrap_err().to_string();
    assert!(err.contains("listen_addres"), "{err}");

    let f = file("[collector.socket]\nmax_tracked_connections = \"lots\"\n");
    let err = Config::load(Some(f.path()), &[], &vec![]).unwrap_err().to_string();
    assert!(err.contains("max_tracked_connections") && err.contains(&f.path().display().to_string()), "{err}");

    let err = Config::load(None, &env(&[("PMOAS_LOG_LEVEL", "loud")]), &vec![]).unwrap_err().to_string();
    assert!(err.contains("PMOAS_LOG_LEVEL") || err.contains("LOG.LEVEL"), "{err}");

    let err = Config::load(None, &[], &vec![("scrape.timeout", "soon".into())]).unwrap_err().to_string();
    assert!(err.contains("--scrape.timeout"), "{err}");

    for (key, value, expect) in [
        ("web.listen_address", "nonsense", "web.listen_address"),
        ("web.telemetry_path", "metrics", "web.telemetry_path"),
        ("web.telemetry_path", "/healthz", "web.telemetry_path"),
        ("scrape.timeout", "0s", "scrape.timeout"),
        ("collector.socket.max_series", "3", "collector.socket.max_series"),
    ] {
        let err = Config::load(None, &[], &vec![(key, value.into())]).unwrap_err().to_string();
        assert!(err.contains(expect), "{key}={value}: {err}");
    }

    let missing = Path::new("/nonexistent/pmoas.toml");
    let err = Config::load(Some(missing), &[], &vec![]).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/pmoas.toml") && err.contains("no such file"), "{err}");
}

#[test]
fn listen_address_forms() {
    for (raw, want) in [(":9", "0.0.0.0:9"), ("127.0.0.1:80", "127.0.0.1:80"), ("[::1]:80", "[::1]:80")] {
        let c = Config::load(None, &[], &vec![("web.listen_address", raw.into())]).unwrap();
        assert_eq!(c.listen_address().unwrap().to_string(), want);
    }
}

/// Every leaf key of the configuration has exactly one setting, so every
/// key is a flag and a variable, and --help lists them all.
#[test]
fn settings_table_covers_every_key() {
    fn leaves(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    leaves(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let mut keys = BTreeSet::new();
    leaves("", &toml::Value::try_from(Config::default()).unwrap(), &mut keys);
    // Optional keys, absent from the defaults.
    for optional in [
        "collectors",
        "discovery.cgroup2",
        "kubernetes.kubeconfig",
        "kubernetes.node_name",
        "engine.socket",
        "target.namespace",
        "target.pod",
        "target.pod_label",
        "collector.http.routes",
        "collector.sockops.exclude_ports",
        "collector.sockops.exclude_cidrs",
    ] {
        keys.insert(optional.into());
    }
    for c in pmoas_collectors::CATALOG {
        keys.insert(format!("collector.{}.enabled", c.name));
    }
    let table: BTreeSet<String> = settings::all().map(|s| s.key.to_string()).collect();
    assert_eq!(keys, table);
}

#[test]
fn spellings() {
    let s = settings::find("web.listen_address").unwrap();
    assert_eq!(s.flag(), "--web.listen-address");
    assert_eq!(s.env_var(), "PMOAS_WEB_LISTEN_ADDRESS");
    assert_eq!(s.heading(), "Web");
    let t = settings::find("collector.socket.enabled").unwrap();
    assert_eq!(t.flag(), "--collector.socket");
    assert_eq!(t.env_var(), "PMOAS_COLLECTOR_SOCKET_ENABLED");
    assert_eq!(settings::find("collector.socket.max_series").unwrap().heading(), "Collector socket");
}

#[test]
fn effective_config_renders_and_reloads() {
    let c = Config::load(None, &[], &vec![("log.format", "json".into())]).unwrap();
    let f = file(&c.to_toml());
    assert_eq!(Config::load(Some(f.path()), &[], &vec![]).unwrap(), c);
}

/// Every number and duration setting declares its bounds, so none can be
/// added that skips the range check: zero intervals pinned a core, zero
/// timeouts failed every scrape.
#[test]
fn every_number_and_duration_has_bounds() {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    for s in settings::all() {
        let Some(v) = lookup(&defaults, s.key) else { continue };
        let is_duration =
            matches!(v, toml::Value::String(t) if humantime_serde::re::humantime::parse_duration(t).is_ok());
        if matches!(v, toml::Value::Integer(_)) || is_duration {
            let b = s.bounds.unwrap_or_else(|| panic!("{} has no bounds", s.key));
            // The default itself is allowed.
            Config::load(None, &[], &vec![(s.key, v.to_string().trim_matches('"').to_string())])
                .unwrap_or_else(|e| panic!("{}: default outside {}: {e}", s.key, b.describe()));
        }
    }
}

#[test]
fn out_of_range_values_are_refused_with_key_flag_and_range() {
    for (key, value, range) in [
        ("discovery.rescan_interval", "0s", "100ms..=1h"),
        ("engine.poll_interval", "0s", "100ms..=1h"),
        ("collector.socket.local_address_refresh", "0s", "1s..=1h"),
        ("scrape.timeout", "0s", "100ms..=10m"),
        ("scrape.timeout", "1year", "100ms..=10m"),
        ("discovery.grace_period", "400days", "0s..=1day"),
        ("collector.cgroup.max_cgroups", "0", "64..=16777216"),
        ("collector.socket.max_series", "-1", "64..=16777216"),
        ("collector.socket.max_tracked_connections", "99999999999", "64..=16777216"),
    ] {
        let err = Config::load(None, &[], &vec![(key, value.into())]).unwrap_err().to_string();
        let flag = settings::find(key).unwrap().flag();
        assert!(err.contains(key) && err.contains(&flag) && err.contains(range), "{key}={value}: {err}");
    }
    // All problems at once, from a file too.
    let f = file("[discovery]\nrescan_interval = \"0s\"\n[collector.cgroup]\nmax_cgroups = 1\n");
    let err = Config::load(Some(f.path()), &[], &vec![]).unwrap_err().to_string();
    assert!(err.contains("discovery.rescan_interval") && err.contains("collector.cgroup.max_cgroups"), "{err}");
    // Negative durations get the range, not a serde message.
    let err = Config::load(None, &[], &vec![("scrape.timeout", "-5s".into())]).unwrap_err().to_string();
    assert!(err.contains("`-5s`") && err.contains("100ms..=10m") && err.contains("--scrape.timeout"), "{err}");
    let err =
        Config::load(None, &env(&[("PMOAS_DISCOVERY_RESCAN_INTERVAL", "fast")]), &vec![]).unwrap_err().to_string();
    assert!(err.contains("PMOAS_DISCOVERY_RESCAN_INTERVAL") && err.contains("100ms..=1h"), "{err}");
}

#[test]
fn errors_name_keys_as_users_write_them() {
    let f = file("[collector.socket]\nmax_series = \"many\"\n");
    let err = Config::load(Some(f.path()), &[], &vec![]).unwrap_err().to_string();
    assert!(!err.contains("default."), "figment's profile leaked into the key: {err}");
    assert!(err.contains("collector.socket.max_series (--collector.socket.max-series)"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");
    let err = Config::load(None, &env(&[("PMOAS_LOG_LEVEL", "loud")]), &vec![]).unwrap_err().to_string();
    assert!(!err.contains("default.") && err.contains("log.level") && err.contains("PMOAS_LOG_LEVEL"), "{err}");
}

#[test]
fn config_file_that_is_a_directory_or_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let err = Config::load(Some(dir.path()), &[], &vec![]).unwrap_err().to_string();
    assert!(err.contains("is a directory"), "{err}");
    // /dev/null is the usual way to say "no file": the defaults.
    assert_eq!(Config::load(Some(Path::new("/dev/null")), &[], &vec![]).unwrap(), Config::default());
}

#[test]
fn listen_address_host_names_resolve() {
    let c = Config::load(None, &[], &vec![("web.listen_address", "localhost:19880".into())]).unwrap();
    assert_eq!(c.listen_address().unwrap().to_string(), "127.0.0.1:19880");
    for bad in ["localhost", "localhost:http", "localhost:99999", "no-such-host.invalid:1"] {
        let err = Config::load(None, &[], &vec![("web.listen_address", bad.into())]).unwrap_err().to_string();
        assert!(err.contains("web.listen_address") && err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn empty_collector_list_is_an_error() {
    for empty in ["", " ", ","] {
        let err = Config::load(None, &[], &vec![("collectors", empty.into())]).unwrap_err().to_string();
        assert!(err.contains("collectors") && err.contains("--collector.disable-defaults"), "{empty:?}: {err}");
    }
    let c = Config::load(None, &[], &vec![("collector.disable_defaults", "true".into())]).unwrap();
    assert!(c.enabled_collectors().unwrap().is_empty(), "no collector, on purpose");
}

#[test]
fn unknown_pmoas_variables_are_warned_about() {
    let e = env(&[
        ("PMOAS_WEB_LISTEN_ADRESS", ":1"),
        ("PMOAS_NONSENSE", "1"),
        ("PMOAS_WEB_LISTEN_ADDRESS", ":2"),
        ("PMOAS_REQUIRE_BPF", "1"),
        ("PMOAS_CONFIG_FILE", "/x"),
        ("HOME", "/root"),
    ]);
    let w = unknown_env_vars(&e);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("PMOAS_WEB_LISTEN_ADRESS") && w[0].contains("did you mean PMOAS_WEB_LISTEN_ADDRESS"),
        "{w:?}"
    );
    assert!(w[1].contains("PMOAS_NONSENSE") && !w[1].contains("did you mean"), "{w:?}");
}

/// The collectors' sections of the example file come from their modules:
/// a collector added or changed there shows here, or this test fails (and
/// `PMOAS_BLESS=1 cargo test -p pmoas-config` writes the new text).
#[test]
fn example_collector_sections_come_from_the_collectors() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pmoas.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let begin = text.find(EXAMPLE_BEGIN).expect("begin marker") + EXAMPLE_BEGIN.len();
    let end = text.find(EXAMPLE_END).expect("end marker");
    let want = format!("{}\n", example_collector_sections().trim_end());
    let want = format!("\n{}", want.trim_start_matches('\n'));
    if std::env::var_os("PMOAS_BLESS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &text[..begin], &text[end..])).unwrap();
        return;
    }
    assert_eq!(&text[begin..end], want, "pmoas.example.toml is stale: run PMOAS_BLESS=1 cargo test -p pmoas-config");
    for spec in pmoas_collectors::SPECS {
        assert!(text.contains(&format!("[collector.{}]", spec.info.name)));
        for s in spec.settings {
            assert!(s.key.starts_with(&format!("collector.{}.", spec.info.name)), "{} outside its section", s.key);
        }
    }
}

#[test]
fn http_route_patterns_from_a_flag_and_bad_ones_refused() {
    let c = Config::load(None, &[], &vec![("collector.http.routes", "/users/{id},/static/*".into())]).unwrap();
    assert_eq!(c.collector.http.routes, vec!["/users/{id}".to_string(), "/static/*".to_string()]);
    let err = Config::load(None, &[], &vec![("collector.http.routes", "/a,users".into())]).unwrap_err().to_string();
    assert!(err.contains("collector.http.routes") && err.contains("`users`: must start with `/`"), "{err}");
}
