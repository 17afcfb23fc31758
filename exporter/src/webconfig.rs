//! `--web.config.file`: TLS and basic authentication, in the format of the
//! Prometheus exporter-toolkit (what node_exporter and Prometheus read), so
//! one file serves them all:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/pmoas/tls.crt
//!   key_file: /etc/pmoas/tls.key
//! basic_auth_users:
//!   prometheus: $2y$10$...   # bcrypt, e.g. htpasswd -nBC 10 "" | tr -d ':\n'
//! ```
//!
//! Every endpoint but `/healthz` asks for the password (a kubelet's probe
//! has none). The toolkit's other keys (client certificates, TLS versions,
//! cipher suites, HTTP headers) are refused by name rather than ignored: a
//! setting that silently does nothing is worse than an error.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: String,
    key_file: String,
    /// Accepted only as the toolkit's default, `NoClientCert`.
    client_auth_type: Option<String>,
}

/// Successful `Authorization` headers remembered, so that bcrypt (tens of
/// milliseconds by design) runs once per credential, not per scrape.
const AUTH_CACHE: usize = 64;

/// What the web config file asks for.
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
    users: BTreeMap<String, String>,
    accepted: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig").field("tls", &self.tls.is_some()).field("users", &self.users.len()).finish()
    }
}

impl WebConfig {
    /// Reads and checks the file; every error names the file and what is wrong.
    pub fn load(path: &Path) -> Result<WebConfig, String> {
        let at = |what: String| format!("--web.config.file {}: {what}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| {
                at(format!(
                    "{e} (pmoas reads tls_server_config.cert_file, .key_file and basic_auth_users; other keys of the \
                     exporter-toolkit format are not supported)"
                ))
            })?
        };
        for (user, hash) in &file.basic_auth_users {
            hash.parse::<bcrypt::HashParts>()
                .map_err(|e| at(format!("basic_auth_users.{user}: not a bcrypt hash ({e})")))?;
        }
        let tls = match file.tls_server_config {
            None => None,
            Some(t) => {
                if let Some(kind) = t.client_auth_type.as_deref().filter(|k| *k != "NoClientCert") {
                    return Err(at(format!(
                        "tls_server_config.client_auth_type {kind}: client certificates are not supported"
                    )));
                }
                Some(acceptor(Path::new(&t.cert_file), Path::new(&t.key_file)).map_err(at)?)
            }
        };
        Ok(WebConfig { tls, users: file.basic_auth_users, accepted: Mutex::new(HashSet::new()) })
    }

    pub fn auth_required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Was this `Authorization` header accepted before (no bcrypt needed)?
    pub fn remembered(&self, header: Option<&str>) -> bool {
        self.users.is_empty()
            || header.is_some_and(|h| self.accepted.lock().unwrap_or_else(|p| p.into_inner()).contains(h))
    }

    /// Does this `Authorization` header name a configured user and password?
    /// Runs bcrypt when the header is new: call it off the async workers.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        if self.remembered(header) {
            return true;
        }
        let Some(header) = header else { return false };
        let accepted = || self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        let Some((user, password)) = basic_credentials(header) else { return false };
        // Not under the lock: bcrypt takes tens of milliseconds, and other
        // requests with remembered credentials must not wait for it.
        let ok = self.users.get(&user).is_some_and(|hash| bcrypt::verify(&password, hash).unwrap_or(false));
        if ok {
            let mut accepted = accepted();
            if accepted.len() >= AUTH_CACHE {
                accepted.clear();
            }
            accepted.insert(header.to_string());
        }
        ok
    }
}

/// `Basic base64(user:password)`.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic "))?.trim();
    let decoded = String::from_utf8(base64_decode(encoded)?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_server_config.cert_file {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config.cert_file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls_server_config.cert_file {}: no PEM certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls_server_config.key_file {}: {e} (a PEM private key)", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: the certificate and key do not make a TLS identity: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        assert_eq!(basic_credentials("Basic cHJvbTpzZWNyZXQ="), Some(("prom".into(), "secret".into())));
        assert_eq!(basic_credentials("Basic YTpiOmM="), Some(("a".into(), "b:c".into())));
        assert_eq!(basic_credentials("Bearer x"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(basic_credentials("Basic YQ=="), None, "no colon");
    }

    #[test]
    fn users_are_checked_with_bcrypt_and_remembered() {
        let dir = std::env::temp_dir().join(format!("pmoas-webconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("web.yml");
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(&file, format!("basic_auth_users:\n  prom: {hash}\n")).unwrap();
        let c = WebConfig::load(&file).unwrap();
        assert!(c.auth_required() && c.tls.is_none());
        assert!(c.authorized(Some("Basic cHJvbTpzZWNyZXQ="))); // prom:secret
        assert!(c.authorized(Some("Basic cHJvbTpzZWNyZXQ=")), "remembered");
        assert!(!c.authorized(Some("Basic cHJvbTp3cm9uZw=="))); // prom:wrong
        assert!(!c.authorized(None));

        std::fs::write(&file, "basic_auth_users:\n  prom: plain\n").unwrap();
        assert!(WebConfig::load(&file).unwrap_err().contains("basic_auth_users.prom: not a bcrypt hash"));
        std::fs::write(&file, "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /x.key\n").unwrap();
        assert!(WebConfig::load(&file).unwrap_err().contains("cert_file /nonexistent.crt"));
        std::fs::write(&file, "http_server_config:\n  http2: false\n").unwrap();
        let e = WebConfig::load(&file).unwrap_err();
        assert!(e.contains("http_server_config") && e.contains("not supported"), "{e}");
        std::fs::write(
            &file,
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
        )
        .unwrap();
        assert!(WebConfig::load(&file).unwrap_err().contains("client certificates are not supported"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
