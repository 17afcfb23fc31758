//! `--web.config.file` end to end, against the built exporter: a TLS
//! handshake with the configured certificate (curl checks it against that
//! certificate as its only CA), 401 without or with a wrong password, 200
//! with the right one, /healthz open to a probe, and a clear error at start
//! for a bad file.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl's HTTP status for `url` (0: no HTTP answer, e.g. the handshake
/// failed), and the body.
fn curl(url: &str, ca: &Path, user: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "--cacert"]).arg(ca).args(["-w", "\n%{http_code}", url]);
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let out = cmd.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn tls_and_basic_auth_from_the_web_config_file() {
    let mut problems = Vec::new();
    for tool in ["/usr/bin/openssl", "/usr/bin/curl"] {
        if !Path::new(tool).exists() {
            problems.push(format!("{tool} (apt-get install openssl curl)"));
        }
    }
    if !can_run("tls_and_basic_auth_from_the_web_config_file", &problems) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pmoas-web-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "openssl could not make a certificate");
    let config = dir.join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prom: {}\n",
            cert.display(),
            key.display(),
            bcrypt::hash("s3cret", 6).unwrap()
        ),
    )
    .unwrap();

    let port = free_port();
    let log = dir.join("exporter.log");
    let _exporter = Killed(
        Command::new(exporter_bin())
            .args(["--collector.disable-defaults", "--web.listen-address", &format!("127.0.0.1:{port}")])
            .arg("--web.config.file")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&format!("{base}/healthz"), &cert, None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "no TLS answer on /healthz: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The handshake used the configured certificate: curl trusts only it.
    let (code, body) = curl(&format!("{base}/metrics"), &cert, Some("prom:s3cret"));
    assert_eq!(code, 200);
    assert!(body.contains("pmoas_build_info"), "{body}");
    assert_eq!(curl(&format!("{base}/metrics"), &cert, None).0, 401);
    assert_eq!(curl(&format!("{base}/metrics"), &cert, Some("prom:wrong")).0, 401);
    assert_eq!(curl(&format!("{base}/metrics"), &cert, Some("other:s3cret")).0, 401);
    assert_eq!(curl(&format!("{base}/"), &cert, None).0, 401, "the landing page is protected too");
    assert_eq!(curl(&format!("{base}/readyz"), &cert, Some("prom:s3cret")).0, 200);
    // Another CA: the handshake fails, no HTTP answer.
    let other = dir.join("other.crt");
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &other).ok();
    if other.exists() {
        assert_eq!(curl(&format!("{base}/healthz"), &other, None).0, 0);
    }
    // Plain HTTP to the TLS port gets no page.
    let (status, _) = http_get(([127, 0, 0, 1], port).into(), "/healthz", &[]).unwrap_or((0, String::new()));
    assert_ne!(status, 200);

    // A bad file: the exporter does not start, and says what is wrong.
    std::fs::write(&config, "basic_auth_users:\n  prom: not-a-hash\n").unwrap();
    let out = Command::new(exporter_bin())
        .args(["--collector.disable-defaults", "--web.listen-address", "127.0.0.1:0", "--web.config.file"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--web.config.file") && stderr.contains("basic_auth_users.prom: not a bcrypt hash"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
