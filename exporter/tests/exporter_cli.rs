//! The exporter as an SRE meets it: flags, config errors, subcommands,
//! HTTP endpoints, bad requests, missing privileges, and SIGTERM.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(exporter_bin()).args(args).output().expect("running pmoas-exporter")
}

#[test]
fn unknown_collector_is_an_error_that_lists_the_valid_ones() {
    let out = run(&["--collectors", "socket,nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown collector `nosuch`") && err.contains("valid collectors: socket, cgroup, netstack"),
        "{err}"
    );
}

#[test]
fn bad_config_file_names_the_key() {
    let mut f = tempfile();
    writeln!(f.1, "[web]\nlisten_address = \":8765\"\n[collector.socket]\nmax_series = \"many\"").unwrap();
    let out = run(&["--config.file", f.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_series") && err.contains(f.0.to_str().unwrap()), "{err}");
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let out = Command::new(exporter_bin())
        .args(["--config.check", "--web.telemetry-path", "/m"])
        .env("PMOAS_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("configuration OK; collectors: socket"), "{text}");
    assert!(text.contains("telemetry_path = \"/m\"") && text.contains("format = \"json\""), "{text}");
}

#[test]
fn version_and_completion() {
    let out = run(&["version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("pmoas-exporter {}", env!("CARGO_PKG_VERSION"))));
    let out = run(&["completion", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--web.listen-address"));
}

#[test]
fn endpoints_bad_requests_and_sigterm() {
    // No collector: nothing here needs privileges.
    let exp = Exporter::start(&["--collector.disable-defaults", "--web.telemetry-path", "/m"]);
    let (status, body) = exp.get("/m").unwrap();
    assert_eq!(status, 200);
    let m = Metrics::parse(&body);
    assert_eq!(m.get("pmoas_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(body.contains("# TYPE pmoas_discovery_workloads gauge"));
    let (_, om) = exp.request("/m", &[("Accept", "application/openmetrics-text;version=1.0.0")]).unwrap();
    assert!(om.ends_with("# EOF\n"), "OpenMetrics when asked");
    assert_eq!(exp.get("/healthz").unwrap(), (200, "ok\n".to_string()));
    assert_eq!(exp.get("/readyz").unwrap().0, 200);
    let (status, page) = exp.get("/").unwrap();
    assert!(status == 200 && page.contains("pmoas exporter") && page.contains("href=\"/m\""), "{page}");
    assert_eq!(exp.get("/metrics").unwrap().0, 404, "the telemetry path moved");
    assert_eq!(exp.get("/m?collect[]=socket").unwrap().0, 400, "socket is not enabled here");
    // Garbage on the wire: the exporter shrugs and keeps serving.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET /m HTTP/1.1\r\nHost: x\r\nContent-Length: zzz\r\n\r\n",
        b"POST /m HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let mut s = std::net::TcpStream::connect(exp.addr).unwrap();
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    }
    assert_eq!(exp.get("/m").unwrap().0, 200);
    let status = exp.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
}

#[test]
fn without_privileges_it_keeps_serving_and_says_what_is_missing() {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("root, to drop privileges".to_string());
    }
    if !std::path::Path::new("/usr/bin/setpriv").exists() {
        problems.push("/usr/bin/setpriv (apt-get install util-linux)".to_string());
    }
    if !can_run("without_privileges_it_keeps_serving_and_says_what_is_missing", &problems) {
        return;
    }
    // A container for the cgroup collector to read (made as root).
    let pod = pmoas_testbed::lite::LitePod::create(&[Some("app-process")]).expect("lite pod");
    // The exporter as `nobody`, no capabilities at all.
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(exporter_bin());
    let exp = Exporter::start_with(cmd, &["--collectors", "socket,cgroup"]);
    let m = exp.scrape();
    assert_eq!(m.get("pmoas_scrape_collector_success", &[("collector", "socket")]), Some(0.0));
    // cgroupfs needs no privilege: CPU and memory are still served, the
    // programs are reported at 0, and the sources say what is missing.
    let container = [("pod", pod.uid.as_str()), ("container", &pod.containers[0].id[..12])];
    let m = exp.eventually("the container's CPU from cgroupfs", std::time::Duration::from_secs(10), |m| {
        m.get("pmoas_container_cpu_usage_seconds_total", &container).is_some()
    });
    assert_eq!(m.get("pmoas_scrape_collector_success", &[("collector", "cgroup")]), Some(1.0));
    assert_eq!(
        m.get("pmoas_ebpf_program_attached", &[("collector", "cgroup"), ("program", "cgroup_skb_ingress")]),
        Some(0.0)
    );
    assert!(m.get("pmoas_cgroup_sources", &[("resource", "network"), ("source", "none")]).unwrap_or(0.0) >= 1.0);
    assert!(m.get("pmoas_cgroup_sources", &[("resource", "oom"), ("source", "ebpf")]).is_none());
    assert!(m.get("pmoas_container_network_receive_bytes_total", &container).is_none(), "no network source, no zeros");
    drop(pod);
    assert_eq!(m.get("pmoas_build_info", &[]), Some(1.0));
    assert_eq!(
        m.get(
            "pmoas_ebpf_program_attached",
            &[("collector", "socket"), ("program", "socket_state_change"), ("hook", "tp_btf/inet_sock_set_state")]
        ),
        Some(0.0),
        "every program is reported, at 0"
    );
    // Each feature the missing capabilities take away says so.
    for (component, feature) in [("socket", "connections"), ("cgroup", "network_per_container")] {
        assert_eq!(
            m.get("pmoas_feature_degraded", &[("component", component), ("feature", feature)]),
            Some(1.0),
            "{component}/{feature}"
        );
    }
    let (_, page) = exp.get("/").unwrap();
    assert!(page.contains("failed") && page.contains("CAP_BPF"), "the landing page says what to grant:\n{page}");
    assert!(page.contains("network_per_container"), "and which features are missing:\n{page}");
    assert!(exp.log_text().contains("CAP_BPF"), "and so does the log");
    assert_eq!(exp.terminate().code(), Some(0));
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    let p = std::env::temp_dir().join(format!("pmoas-cli-test-{}-{}.toml", std::process::id(), common::free_port()));
    let f = std::fs::File::create(&p).unwrap();
    (p, f)
}
