//! The testbed itself: it serves through a real sidecar, and its teardown
//! leaves nothing behind. Needs root, Envoy and nginx; with
//! PMOAS_REQUIRE_BPF=1 (CI) a missing prerequisite fails instead of skipping.

use std::path::Path;

use pmoas_testbed::{Place, Pod, PodOptions, missing_prerequisites, traffic};

fn prerequisites_or_skip() -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("PMOAS_REQUIRE_BPF").is_some() {
        panic!("PMOAS_REQUIRE_BPF is set but the testbed cannot run: {}", missing.join("; "));
    }
    pmoas_testbed::report_skip("testbed lifecycle", &format!("missing {}", missing.join("; ")));
    false
}

#[test]
fn pod_serves_through_envoy_and_teardown_leaves_nothing() {
    if !prerequisites_or_skip() {
        return;
    }
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let s = pod.state.clone();

    // Through the sidecar from the host, each nginx endpoint.
    let addr = pod.envoy_addr();
    assert_eq!(traffic::http_get(addr, "/").unwrap().0, 200);
    assert_eq!(traffic::http_get(addr, "/error").unwrap().0, 503);
    let t = std::time::Instant::now();
    assert_eq!(traffic::http_get(addr, "/delay").unwrap().0, 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(50), "the delay endpoint waits 50 ms");

    // Ground-truth sources answer.
    let stats = pod.envoy_stats().unwrap();
    assert!(stats.get("cluster.app.upstream_cx_total").copied().unwrap_or(0) >= 1, "Envoy stats: {}", stats.len());
    assert!(pod.nginx_accepts().unwrap() >= 1);
    assert!(pod.netns_counters().unwrap().contains_key("Tcp.RetransSegs"));

    // Processes sit in their containers' cgroups, v2 and v1.
    let envoy_pid = pod.pids().iter().find(|(n, _)| n == "envoy").unwrap().1;
    let procs = std::fs::read_to_string(s.sidecar_cgroups.v2().unwrap().join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == envoy_pid.to_string()), "envoy {envoy_pid} not in {procs}");
    assert!(s.sidecar_cgroups.dirs.len() > 1 || !Path::new("/sys/fs/cgroup/memory").exists(), "v1 directories too");

    // A command placed in the app container runs there, in the pod's netns.
    let out = pod
        .command(Place::App, "/bin/sh")
        .args(["-c", "cat /proc/self/cgroup; readlink /proc/self/ns/net"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("cri-containerd-{}.scope", s.app_id)), "{text}");

    pod.down().expect("clean teardown");
    assert!(!Path::new(&format!("/run/netns/{}", s.netns)).exists(), "netns left");
    assert!(!Path::new(&format!("/sys/class/net/{}", s.bridge)).exists(), "bridge left");
    for set in [&s.sidecar_cgroups, &s.app_cgroups, &s.client_cgroups] {
        for d in &set.dirs {
            assert!(!d.exists(), "cgroup left: {}", d.display());
        }
    }
    let pod_slice = s.sidecar_cgroups.v2().unwrap().parent().unwrap();
    assert!(!pod_slice.exists(), "pod slice left: {}", pod_slice.display());
    for p in &s.processes {
        assert!(!p.alive(), "{} still running", p.name);
    }
    assert!(!s.state_dir.exists());
}

/// The CLI refuses what it does not understand instead of running with a
/// default: `--stagger 5` for `--stagger-ms 5` once made a test measure the
/// wrong load.
#[test]
fn the_cli_refuses_unknown_options_and_commands() {
    let cli = env!("CARGO_BIN_EXE_pmoas-testbed");
    for (args, says) in [
        (&["http", "--connect", "127.0.0.1:9", "--stagger", "5"][..], "`http` does not take `--stagger`"),
        (&["tcp-client", "--connect", "127.0.0.1:9", "--reset"][..], "`tcp-client` does not take `--reset`"),
        (&["conn-server", "--listen", "127.0.0.1:9", "--count", "5"][..], "`conn-server` does not take `--count`"),
        (
            &["conn-client", "--connect", "127.0.0.1:9", "--count", "1", "--rate", "5"][..],
            "--count N (hold) or --rate R",
        ),
        (&["status", "extra"][..], "takes no arguments"),
        (&["bogus"][..], "unknown command `bogus`"),
    ] {
        let out = std::process::Command::new(cli).args(args).output().expect("running pmoas-testbed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
}
