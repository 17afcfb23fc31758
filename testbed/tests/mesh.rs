//! What real meshes do, each against its own ground truth: the Istio layout
//! (istio-init's nat rules count the connections they redirect, Envoy's
//! admin counts what it proxied, nginx names the peer it saw), the app's
//! outbound path (counted on the upstream pod), the gRPC Greeter (counted by
//! its client and by Envoy's gRPC stats) and Envoy's fault delay (measured by
//! the client). Needs root, Envoy, nginx and, for gRPC, the venv's grpcio;
//! with PMOAS_REQUIRE_BPF=1 (CI) a missing prerequisite fails instead of
//! skipping.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pmoas_testbed::{Layout, Place, Pod, PodOptions, grpc, missing_prerequisites, traffic};

fn required() -> bool {
    std::env::var_os("PMOAS_REQUIRE_BPF").is_some_and(|v| v != "0")
}

fn prerequisites_or_skip(test: &str, with_grpc: bool) -> bool {
    let mut missing = missing_prerequisites();
    if with_grpc && let Err(e) = grpc::python() {
        missing.push(e);
    }
    if missing.is_empty() {
        return true;
    }
    if required() {
        panic!("{test}: PMOAS_REQUIRE_BPF is set but the testbed cannot run: {}", missing.join("; "));
    }
    pmoas_testbed::report_skip(test, &format!("missing {}", missing.join("; ")));
    false
}

/// `after - before` of one Envoy counter (absent: 0).
fn delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, name: &str) -> u64 {
    let get = |m: &HashMap<String, u64>| m.get(name).copied().unwrap_or(0);
    get(after) - get(before)
}

/// The packets of the one rule of a chain that does the work (its last).
fn redirected(pod: &Pod, chain: &str) -> u64 {
    *pod.nat_packets(chain).unwrap().last().unwrap_or_else(|| panic!("{chain} has no rule"))
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn istio_layout_takes_inbound_through_envoy_to_nginx_from_127_0_0_6() {
    if !prerequisites_or_skip("istio_layout_takes_inbound_through_envoy_to_nginx_from_127_0_0_6", false) {
        return;
    }
    let pod = Pod::up(&PodOptions { layout: Layout::Istio, ..Default::default() }).expect("testbed up");
    let envoy = pod.pids().into_iter().find(|(n, _)| n == "envoy").unwrap().1;
    assert_eq!(uid_of(envoy), pmoas_testbed::ENVOY_UID, "Envoy runs as istio-proxy's uid");
    let nginx = pod.pids().into_iter().find(|(n, _)| n == "nginx").unwrap().1;
    assert_eq!(uid_of(nginx), 0);

    // Clients call the app's own port on the pod IP, as in Istio.
    let addr = pod.inbound_addr();
    assert_eq!(addr.port(), 8080);
    let before = pod.envoy_stats().unwrap();
    let in_before = redirected(&pod, "ISTIO_IN_REDIRECT");
    let out_before = redirected(&pod, "ISTIO_REDIRECT");

    // nginx sees Envoy's connection from 127.0.0.6.
    let (status, peer) = traffic::http_get(addr, "/whoami").unwrap();
    assert_eq!((status, peer.trim()), (200, "127.0.0.6"));
    let n = 20;
    let r = traffic::http_load(addr, "/", n, 4);
    assert_eq!(r.statuses, vec![(200, n)], "{r:?}");
    assert_eq!(traffic::http_get(addr, "/error").unwrap().0, 503);
    let total = n + 2;

    let after = pod.envoy_stats().unwrap();
    // Each connection's SYN went through PREROUTING's REDIRECT once ...
    assert_eq!(redirected(&pod, "ISTIO_IN_REDIRECT") - in_before, total, "connections redirected to 15006");
    // ... and Envoy's inbound listener accepted exactly those, and
    // proxied every request to the app's cluster.
    assert_eq!(delta(&after, &before, "listener.0.0.0.0_15006.downstream_cx_total"), total);
    assert_eq!(delta(&after, &before, "http.inbound.downstream_rq_total"), total);
    assert_eq!(delta(&after, &before, "cluster.app.upstream_rq_total"), total);
    assert_eq!(delta(&after, &before, "cluster.app.upstream_rq_503"), 1);
    // Envoy's own connections (uid 1337, from 127.0.0.6) were never taken
    // to its outbound listener.
    assert_eq!(redirected(&pod, "ISTIO_REDIRECT") - out_before, 0);
    assert_eq!(delta(&after, &before, "listener.0.0.0.0_15001.downstream_cx_total"), 0);
    pod.down().expect("clean teardown");
}

#[test]
fn the_app_calls_an_upstream_pod_through_its_sidecar() {
    if !prerequisites_or_skip("the_app_calls_an_upstream_pod_through_its_sidecar", false) {
        return;
    }
    for layout in [Layout::Plain, Layout::Istio] {
        let pod = Pod::up(&PodOptions { layout, upstream: true, ..Default::default() }).expect("testbed up");
        let up = pod.upstream().expect("an upstream pod");
        assert_eq!(up.state.pod_ip.octets()[..3], pod.state.pod_ip.octets()[..3], "{layout:?}: same bridge");
        assert_eq!(up.state.layout, Layout::Plain);

        let n = 12;
        let before = pod.envoy_stats().unwrap();
        let up_before = up.envoy_stats().unwrap();
        let nat_before = (layout == Layout::Istio).then(|| redirected(&pod, "ISTIO_REDIRECT"));
        let r = pod.call_upstream(n, 3).unwrap();
        assert_eq!(r.statuses, vec![(200, n)], "{layout:?}: {r:?}");
        let after = pod.envoy_stats().unwrap();
        let up_after = up.envoy_stats().unwrap();

        // Counted where they arrived: the upstream pod's sidecar and app ...
        assert_eq!(delta(&up_after, &up_before, "http.inbound.downstream_rq_total"), n, "{layout:?}");
        assert_eq!(delta(&up_after, &up_before, "cluster.app.upstream_rq_200"), n, "{layout:?}");
        // ... and on the way out, by our sidecar's outbound listener.
        assert_eq!(delta(&after, &before, "http.outbound.downstream_rq_total"), n, "{layout:?}");
        assert_eq!(delta(&after, &before, "cluster.outbound.upstream_rq_total"), n, "{layout:?}");
        // Istio: the app connected to the upstream's own address, once per
        // call, and each connection was REDIRECTed to 15001.
        if let Some(nat_before) = nat_before {
            assert_eq!(redirected(&pod, "ISTIO_REDIRECT") - nat_before, n, "app connections redirected to 15001");
            assert_eq!(delta(&after, &before, "listener.0.0.0.0_15001.downstream_cx_total"), n);
        } else {
            assert!(pod.nat_packets("ISTIO_REDIRECT").is_err(), "plain layout has no Istio chains");
        }
        // The upstream's nginx saw its own sidecar.
        let (status, body) = traffic::http_get(pod.inbound_addr(), "/upstream/whoami").unwrap();
        assert_eq!((status, body.trim()), (200, "127.0.0.1"), "{layout:?}");

        // Istio: by the upstream's service VIP (an address outside the
        // node, as a ClusterIP), mapped to the upstream pod by Envoy.
        if let Some(vip) = pod.upstream_service() {
            let before = pod.envoy_stats().unwrap();
            let up_before = up.envoy_stats().unwrap();
            let nat_before = redirected(&pod, "ISTIO_REDIRECT");
            let r = pod.call_upstream_service(n, 3).unwrap();
            assert_eq!(r.statuses, vec![(200, n)], "via {vip}: {r:?}");
            let after = pod.envoy_stats().unwrap();
            assert_eq!(redirected(&pod, "ISTIO_REDIRECT") - nat_before, n);
            assert_eq!(delta(&after, &before, "cluster.service.upstream_rq_total"), n);
            assert_eq!(delta(&after, &before, "cluster.passthrough.upstream_cx_total"), 0);
            let up_after = up.envoy_stats().unwrap();
            assert_eq!(delta(&up_after, &up_before, "http.inbound.downstream_rq_total"), n);
        }
        // Istio: any other TCP of the app is redirected as well, and passed
        // through to its original destination.
        if layout == Layout::Istio {
            let bin = env!("CARGO_BIN_EXE_pmoas-testbed");
            let before = pod.envoy_stats().unwrap();
            let nat_before = redirected(&pod, "ISTIO_REDIRECT");
            let mut server = up
                .command(Place::App, bin)
                .args(["tcp-server", "--listen", "0.0.0.0:7001", "--count", "3", "--send", "500"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(server.stderr.take().unwrap()).read_line(&mut line).unwrap();
            assert!(line.starts_with("listening"), "{line}");
            let to = format!("{}:7001", up.state.pod_ip);
            let out = pod
                .command(Place::App, bin)
                .args(["tcp-client", "--connect", &to, "--count", "3", "--send", "100"])
                .output()
                .unwrap();
            let client: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let server: serde_json::Value = serde_json::from_slice(&server.wait_with_output().unwrap().stdout).unwrap();
            assert_eq!(
                (client["bytes_received"].as_u64(), client["resets"].as_u64()),
                (Some(1500), Some(0)),
                "{client}"
            );
            assert_eq!((server["accepted"].as_u64(), server["bytes_received"].as_u64()), (Some(3), Some(300)));
            let after = pod.envoy_stats().unwrap();
            assert_eq!(redirected(&pod, "ISTIO_REDIRECT") - nat_before, 3);
            assert_eq!(delta(&after, &before, "tcp.passthrough.downstream_cx_total"), 3);
            assert_eq!(delta(&after, &before, "cluster.passthrough.upstream_cx_total"), 3);
        }
        let (s, u) = (pod.state.clone(), up.state.clone());
        pod.down().expect("clean teardown");
        for netns in [&s.netns, &u.netns] {
            assert!(!std::path::Path::new(&format!("/run/netns/{netns}")).exists(), "{netns} left");
        }
        assert!(!std::path::Path::new(&format!("/sys/class/net/{}", u.host_veth)).exists());
        assert!(u.processes.iter().chain(&s.processes).all(|p| !p.alive()));
        assert!(u.sidecar_cgroups.dirs.iter().all(|d| !d.exists()));
    }
}

#[test]
fn grpc_calls_fail_with_unavailable_on_demand() {
    if !prerequisites_or_skip("grpc_calls_fail_with_unavailable_on_demand", true) {
        return;
    }
    for layout in [Layout::Plain, Layout::Istio] {
        let pod = Pod::up(&PodOptions { layout, grpc: true, ..Default::default() }).expect("testbed up");
        let before = pod.envoy_stats().unwrap();
        let nat_before = (layout == Layout::Istio).then(|| redirected(&pod, "ISTIO_IN_REDIRECT"));
        let (n, m) = (40, 10);
        let r = pod.grpc_calls(n, m, 4).unwrap();
        let after = pod.envoy_stats().unwrap();

        // The client's count ...
        assert_eq!(r.calls, n);
        assert_eq!((r.code("OK"), r.code("UNAVAILABLE")), (n - m, m), "{layout:?}: {r:?}");
        // ... Envoy's: every call through cluster grpc over HTTP/2, by
        // gRPC status (grpc_stats: 0 OK, 14 UNAVAILABLE).
        let stat = |s: &str| delta(&after, &before, &format!("cluster.grpc.grpc.helloworld.Greeter.SayHello.{s}"));
        assert_eq!(
            (stat("total"), stat("success"), stat("failure"), stat("0"), stat("14")),
            (n, n - m, m, n - m, m),
            "{layout:?}"
        );
        assert_eq!(delta(&after, &before, "cluster.grpc.upstream_rq_total"), n);
        assert_eq!(delta(&after, &before, "cluster.grpc.upstream_cx_http2_total"), 1, "h2c to the Greeter");
        assert_eq!(delta(&after, &before, "cluster.app.upstream_rq_total"), 0);
        if let Some(nat_before) = nat_before {
            // One HTTP/2 connection to the Greeter's port, redirected.
            assert_eq!(pod.grpc_addr().port(), grpc::GRPC_PORT);
            assert_eq!(redirected(&pod, "ISTIO_IN_REDIRECT") - nat_before, 1);
        }
        pod.down().expect("clean teardown");
    }
}

#[test]
fn fault_delay_holds_every_request_back() {
    if !prerequisites_or_skip("fault_delay_holds_every_request_back", true) {
        return;
    }
    let d = Duration::from_millis(120);
    let pod = Pod::up(&PodOptions { grpc: true, fault_delay: Some(d), ..Default::default() }).expect("testbed up");
    let before = pod.envoy_stats().unwrap();
    // Envoy's timers run on libevent's clock, CLOCK_MONOTONIC_COARSE: a
    // delay may end up to one of its ticks (4 ms at HZ=250) early.
    let tick = coarse_tick();
    let n = 5;
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(traffic::http_get(pod.inbound_addr(), "/").unwrap().0, 200);
        let took = t.elapsed();
        assert!(took + tick >= d && took < d + Duration::from_secs(1), "HTTP request took {took:?}, delay {d:?}");
    }
    let r = pod.grpc_calls(n, 0, 1).unwrap();
    assert_eq!(r.code("OK"), n);
    assert!(
        (r.latency_ms.min + tick.as_secs_f64() * 1e3) >= d.as_secs_f64() * 1e3,
        "gRPC calls: {:?}, delay {d:?}",
        r.latency_ms
    );
    let after = pod.envoy_stats().unwrap();
    assert_eq!(delta(&after, &before, "http.inbound.fault.delays_injected"), 2 * n);
    pod.down().expect("clean teardown");
}

/// The resolution of CLOCK_MONOTONIC_COARSE (one kernel tick).
fn coarse_tick() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes one timespec we own.
    assert_eq!(unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) }, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn envoy_accepts_every_configuration() {
    if !prerequisites_or_skip("envoy_accepts_every_configuration", false) {
        return;
    }
    let envoy = pmoas_testbed::find_envoy().unwrap();
    let dir = std::env::temp_dir().join(format!("pmoas-testbed-envoy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for layout in [Layout::Plain, Layout::Istio] {
        for (upstream, grpc, fault) in [(false, false, false), (true, true, true)] {
            let opts = PodOptions {
                layout,
                upstream,
                grpc,
                fault_delay: fault.then_some(Duration::from_millis(5)),
                ..Default::default()
            };
            let file = dir.join("envoy.yaml");
            std::fs::write(&file, pmoas_testbed::envoy_yaml(&opts, 7)).unwrap();
            let out = std::process::Command::new(&envoy)
                .args(["--mode", "validate", "-c"])
                .arg(&file)
                .args(["-l", "error", "--disable-hot-restart"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{opts:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn up_refuses_unknown_flags_before_building_anything() {
    let bin = env!("CARGO_BIN_EXE_pmoas-testbed");
    for args in [&["up", "--layout", "linkerd"][..], &["up", "--fault-delay", "soon"], &["up", "--sidecars"]] {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("the testbed needs") && !err.contains("pod "), "{args:?}: {err}");
    }
}
