//! A fake Kubernetes API server for tests and benchmarks: it serves
//! `GET /api/v1/pods` (list, with the `spec.nodeName` field selector) and its
//! watch (chunked stream of `{"type": "ADDED"|"MODIFIED"|"DELETED",
//! "object": ...}`), from pod objects in the JSON a real API server returns.
//!
//! Plain HTTP on 127.0.0.1; [`FakeKube::kubeconfig`] writes a kubeconfig
//! pointing at it. It can also fail on purpose ([`FakeKube::set_failing`])
//! and cut its watches ([`FakeKube::cut_watches`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    /// Pods by UID.
    pods: BTreeMap<String, Value>,
    /// Every change, in order: (resourceVersion, type, object, sent to
    /// every watch whatever its selector).
    events: Vec<(u64, &'static str, Value, bool)>,
    version: u64,
    /// Bumped to make every open watch end.
    cut: u64,
    failing: bool,
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// A running fake API server; stops when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeKube {
    pub fn start() -> std::io::Result<FakeKube> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Ok(FakeKube { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for this server into `dir`; its path.
    pub fn kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
                 current-context: fake\n",
                self.addr
            ),
        )?;
        Ok(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, kind: &'static str, mut pod: Value) {
        let mut st = self.lock();
        st.version += 1;
        let v = st.version;
        pod["metadata"]["resourceVersion"] = json!(v.to_string());
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        if kind == "DELETED" {
            st.pods.remove(&uid);
        } else {
            st.pods.insert(uid, pod.clone());
        }
        st.events.push((v, kind, pod, false));
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Adds a pod (ADDED), or replaces it (MODIFIED).
    pub fn apply(&self, pod: Value) {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let kind = if self.lock().pods.contains_key(&uid) { "MODIFIED" } else { "ADDED" };
        self.record(kind, pod);
    }

    /// Deletes a pod (DELETED with its last state).
    pub fn delete(&self, uid: &str) {
        let pod = self.lock().pods.get(uid).cloned();
        if let Some(pod) = pod {
            self.record("DELETED", pod);
        }
    }

    /// Sends an event with an arbitrary object (malformed input).
    pub fn send_raw(&self, kind: &'static str, object: Value) {
        let mut st = self.lock();
        st.version += 1;
        let v = st.version;
        st.events.push((v, kind, object, true));
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Answers every request with HTTP 500 while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
        self.cut_watches();
    }

    /// Ends every open watch (clients must list and watch again).
    pub fn cut_watches(&self) {
        self.lock().cut += 1;
        self.shared.changed.notify_all();
    }

    /// The request lines served so far.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut_watches();
        let _ = TcpStream::connect(self.addr);
    }
}

fn query(target: &str) -> BTreeMap<String, String> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), percent_decode(v))).collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn on_node(pod: &Value, selector: Option<&String>) -> bool {
    match selector.and_then(|s| s.strip_prefix("spec.nodeName=")) {
        Some(node) => pod["spec"]["nodeName"].as_str() == Some(node),
        None => true,
    }
}

fn serve(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (failing, cut_at_start) = {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requests.push(line.trim().to_string());
        (st.failing, st.cut)
    };
    let respond = |conn: &mut TcpStream, status: &str, body: &Value| -> std::io::Result<()> {
        let body = body.to_string();
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if failing {
        return respond(
            &mut conn,
            "500 Internal Server Error",
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: request timed out", "code": 500}),
        );
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/api/v1/pods" {
        return respond(
            &mut conn,
            "404 Not Found",
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
    }
    let q = query(&target);
    let selector = q.get("fieldSelector");
    if q.get("watch").map(String::as_str) != Some("true") {
        let st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<Value> = st.pods.values().filter(|p| on_node(p, selector)).cloned().collect();
        let body = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": st.version.to_string()}, "items": items});
        drop(st);
        return respond(&mut conn, "200 OK", &body);
    }

    // A watch: stream every event after the requested version.
    let mut from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290));
    let deadline = Instant::now() + timeout;
    write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    conn.flush()?;
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if shared.stop.load(Ordering::Relaxed) || st.cut != cut_at_start || Instant::now() > deadline {
            break;
        }
        let pending: Vec<(u64, &'static str, Value, bool)> = st.events.iter().filter(|e| e.0 > from).cloned().collect();
        if pending.is_empty() {
            st = shared.changed.wait_timeout(st, Duration::from_millis(500)).unwrap_or_else(|p| p.into_inner()).0;
            continue;
        }
        drop(st);
        for (v, kind, obj, raw) in pending {
            from = v;
            if raw || on_node(&obj, selector) {
                let line = format!("{}\n", json!({"type": kind, "object": obj}));
                write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
            }
        }
        conn.flush()?;
        st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    }
    drop(st);
    write!(conn, "0\r\n\r\n")?;
    conn.flush()
}

/// A pod object as the API server returns it, for the fixtures in
/// `testbed/fixtures/`: `{{NAME}}` placeholders are replaced by `values`.
pub fn fixture(name: &str, values: &[(&str, &str)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(format!("{name}.json"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    for (k, v) in values {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn pod(uid: &str, node: &str) -> Value {
        json!({"metadata": {"uid": uid, "name": format!("p-{uid}"), "namespace": "ns"}, "spec": {"nodeName": node, "containers": []}})
    }

    #[test]
    fn list_filters_by_node_and_watch_streams_changes() {
        let k = FakeKube::start().unwrap();
        k.apply(pod("a", "n1"));
        k.apply(pod("b", "n2"));
        let list = get(k.addr(), "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1");
        assert!(list.contains("\"p-a\"") && !list.contains("\"p-b\""), "{list}");
        let addr = k.addr();
        let watch = std::thread::spawn(move || {
            get(addr, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&watch=true&resourceVersion=2&timeoutSeconds=2")
        });
        std::thread::sleep(Duration::from_millis(200));
        k.apply(pod("c", "n1"));
        k.delete("a");
        let w = watch.join().unwrap();
        assert!(w.contains("\"ADDED\"") && w.contains("\"p-c\"") && w.contains("\"DELETED\""), "{w}");
        k.set_failing(true);
        assert!(get(k.addr(), "/api/v1/pods").starts_with("HTTP/1.1 500"));
    }
}
