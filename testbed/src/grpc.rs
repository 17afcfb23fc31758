//! gRPC in the testbed: `testbed/grpc_server.py`, a helloworld Greeter
//! (`helloworld.Greeter/SayHello`) built from protobuf descriptors at run
//! time (no generated code, no grpcio-tools), run in the app's place behind
//! Envoy over h2c; and `testbed/grpc_client.py`, which makes N calls of
//! which M fail with UNAVAILABLE and prints what it got as JSON. Both run
//! from `target/pmoas-venv` (PyPI grpcio and protobuf).
//!
//! ```sh
//! target/pmoas-venv/bin/python testbed/grpc_server.py --listen 127.0.0.1:50051 [--fail-prefix fail] [--fail-ratio R]
//! target/pmoas-venv/bin/python testbed/grpc_client.py --target 10.200.1.11:15006 --count 100 --fail 10 --concurrency 8
//! target/pmoas-venv/bin/python testbed/grpc_client.py --write-frame req.bin --name ok   # for h2load -d req.bin
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The Greeter's port on 127.0.0.1 inside the pod (also the port clients
/// call on the pod IP in the Istio layout).
pub const GRPC_PORT: u16 = 50051;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testbed/ has a parent").to_path_buf()
}

/// `testbed/<name>`.
pub fn script(name: &str) -> PathBuf {
    workspace().join("testbed").join(name)
}

/// The venv's Python, if it can import grpc and protobuf; else why not.
pub fn python() -> Result<PathBuf, String> {
    let python = workspace().join("target/pmoas-venv/bin/python");
    if !python.exists() {
        return Err(format!("{} missing (scripts/install-deps.sh test)", python.display()));
    }
    let probe = Command::new(&python)
        .args(["-c", "import grpc, google.protobuf.descriptor_pool"])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "grpcio/protobuf missing from target/pmoas-venv (pip install grpcio protobuf): {}",
            String::from_utf8_lossy(&probe.stderr).lines().last().unwrap_or("")
        ));
    }
    Ok(python)
}

/// What `grpc_client.py` saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Calls made.
    pub calls: u64,
    /// gRPC status name (`OK`, `UNAVAILABLE`, ...) -> calls that ended so.
    pub codes: BTreeMap<String, u64>,
    /// Per-call latency, milliseconds: fewest, median, most.
    pub latency_ms: Latency,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub max: f64,
}

impl Report {
    /// Calls that ended with this status name.
    pub fn code(&self, name: &str) -> u64 {
        self.codes.get(name).copied().unwrap_or(0)
    }
}
