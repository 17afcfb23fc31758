//! Collectors and the registry that scrapes them.
//!
//! A collector owns its eBPF object (from `pmoas-bpf`), its config struct,
//! and its metrics. It is built once at start-up ([`build`]) and asked for
//! its series on every scrape ([`Collector::collect`]); the [`Registry`] runs
//! those calls concurrently, bounds them by a timeout, and reports each
//! collector's success and duration, so one that fails or hangs never takes
//! the scrape down.
//!
//! | collector | user side          | kernel side                        |
//! |-----------|--------------------|------------------------------------|
//! | socket    | [`socket`]         | `bpf-programs/src/socket.bpf.c`    |
//! | cgroup    | [`cgroup`]         | `bpf-programs/src/cgroup.bpf.c`    |

pub mod cgroup;
pub mod ebpf;
pub mod histogram;
pub mod metrics;
pub mod registry;
pub mod socket;

use std::sync::Arc;

use pmoas_discovery::Discovery;
use serde::{Deserialize, Serialize};

pub use ebpf::ProgramStatus;
pub use metrics::{Format, MetricSet};
pub use registry::{CollectorState, Registry, ScrapeFilter};

/// One collector: built once, asked for its series on every scrape.
pub trait Collector: Send + Sync + 'static {
    /// Adds this scrape's series. Runs on a blocking thread; an error marks
    /// the collector failed for this scrape only.
    fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()>;

    /// The eBPF programs of this collector and whether they are attached.
    fn programs(&self) -> Vec<ProgramStatus>;
}

/// A collector's name, what it does (for `--help` and the landing page), and
/// whether it runs when nothing is said about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectorInfo {
    pub name: &'static str,
    pub help: &'static str,
    pub default_enabled: bool,
}

/// Every collector this build has.
pub const CATALOG: &[CollectorInfo] = &[socket::INFO, cgroup::INFO];

/// The collectors enabled by default.
pub fn default_collectors() -> Vec<&'static str> {
    CATALOG.iter().filter(|c| c.default_enabled).map(|c| c.name).collect()
}

/// Looks a name up in the catalog; the error lists the valid names.
pub fn info(name: &str) -> Result<&'static CollectorInfo, UnknownCollector> {
    CATALOG.iter().find(|c| c.name == name).ok_or_else(|| UnknownCollector(name.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown collector `{0}`; valid collectors: {valid}", valid = CATALOG.iter().map(|c| c.name).collect::<Vec<_>>().join(", "))]
pub struct UnknownCollector(pub String);

/// Which collectors run, and their settings (config file `[collector]` and
/// `[collector.<name>]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorsConfig {
    /// Start from no collector instead of the default ones.
    pub disable_defaults: bool,
    pub socket: socket::SocketConfig,
    pub cgroup: cgroup::CgroupConfig,
}

impl CollectorsConfig {
    /// `[collector.<name>] enabled`, when it is set.
    pub fn enabled_override(&self, name: &str) -> Option<bool> {
        match name {
            "socket" => self.socket.enabled,
            "cgroup" => self.cgroup.enabled,
            _ => None,
        }
    }
}

/// What a collector may use while it is built.
#[derive(Clone)]
pub struct BuildContext {
    pub discovery: Arc<Discovery>,
    pub config: CollectorsConfig,
}

/// Builds (loads and attaches) one collector by name.
pub fn build(name: &str, ctx: &BuildContext) -> Result<Arc<dyn Collector>, BuildError> {
    match name {
        "socket" => Ok(Arc::new(socket::SocketCollector::new(ctx)?)),
        "cgroup" => Ok(Arc::new(cgroup::CgroupCollector::new(ctx)?)),
        other => Err(BuildError::Unknown(UnknownCollector(other.to_string()))),
    }
}

/// Why a collector could not start; carries the programs' states so they are
/// still reported.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Unknown(#[from] UnknownCollector),
    #[error("{message}")]
    Failed { message: String, programs: Vec<ProgramStatus> },
}

impl BuildError {
    pub fn programs(&self) -> &[ProgramStatus] {
        match self {
            BuildError::Failed { programs, .. } => programs,
            BuildError::Unknown(_) => &[],
        }
    }
}
