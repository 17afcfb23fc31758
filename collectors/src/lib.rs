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
//! | netstack  | [`netstack`]       | `bpf-programs/src/netstack.bpf.c`  |
//! | http      | [`http`]           | `bpf-programs/src/http.bpf.c`      |
//! | sockops   | [`sockops`]        | `bpf-programs/src/sockops.bpf.c`   |
//!
//! Adding one: CONTRIBUTING.md ("Adding a collector").

pub mod cgroup;
pub mod clock;
pub mod ebpf;
pub mod fold;
pub mod histogram;
pub mod http;
pub mod metrics;
pub mod netstack;
pub mod registry;
pub mod setting;
pub mod socket;
pub mod sockops;

use std::sync::{Arc, Mutex, MutexGuard};

use pmoas_discovery::Discovery;
use serde::{Deserialize, Serialize};

pub use ebpf::ProgramStatus;
pub use metrics::{Format, MetricSet};
pub use registry::{CollectorState, Registry, ScrapeFilter};
pub use setting::Setting;

/// One collector: built once, asked for its series on every scrape.
pub trait Collector: Send + Sync + 'static {
    /// Adds this scrape's series. Runs on a blocking thread; an error marks
    /// the collector failed for this scrape only.
    fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()>;

    /// The eBPF programs of this collector and whether they are attached.
    fn programs(&self) -> Vec<ProgramStatus>;

    /// Its eBPF maps and the kernel memory they take (the landing page).
    fn maps(&self) -> Vec<ebpf::MapUsage> {
        Vec::new()
    }
}

/// A collector's name, what it does (for `--help` and the landing page), and
/// whether it runs when nothing is said about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectorInfo {
    pub name: &'static str,
    pub help: &'static str,
    pub default_enabled: bool,
}

/// Everything a collector module declares about itself (`pub const SPEC`);
/// the catalog, the config section, flags, `--help`, the example file and
/// the lost-event reasons all follow from it.
pub struct CollectorSpec {
    pub info: CollectorInfo,
    /// Its compiled eBPF object (`pmoas_bpf::<NAME>`).
    pub object: &'static [u8],
    /// Its `collector.<name>.*` settings, with help and bounds (the
    /// `enabled` toggle is added for every collector).
    pub settings: &'static [Setting],
    /// Its eBPF programs, for health reporting when it cannot start.
    pub programs: &'static [ebpf::ProgramSpec],
    /// Its lost-event reasons; reason `i` is slot `i` of its object's
    /// `lost_events` array, as its C header numbers them.
    pub lost_reasons: &'static [&'static str],
    /// Loads and attaches it.
    pub build: fn(&BuildContext) -> Result<Arc<dyn Collector>, BuildError>,
}

/// The registration: one line per collector, naming its module. The module
/// provides `SPEC: CollectorSpec` and `Config` (its `[collector.<name>]`
/// section, serde with defaults, with an `enabled: Option<bool>` field).
macro_rules! collectors {
    ($($name:ident),+ $(,)?) => {
        /// Every collector this build has, in registration order.
        pub const SPECS: &[&CollectorSpec] = &[$(&$name::SPEC),+];

        /// Name, help and default of every collector.
        pub const CATALOG: &[CollectorInfo] = &[$($name::SPEC.info),+];

        /// Which collectors run, and their settings (config file
        /// `[collector]` and `[collector.<name>]`).
        #[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        pub struct CollectorsConfig {
            /// Start from no collector instead of the default ones.
            pub disable_defaults: bool,
            $(pub $name: $name::Config,)+
        }

        impl CollectorsConfig {
            /// `[collector.<name>] enabled`, when it is set.
            pub fn enabled_override(&self, name: &str) -> Option<bool> {
                match name {
                    $(stringify!($name) => self.$name.enabled,)+
                    _ => None,
                }
            }
        }

        // A module's SPEC names the collector after its module.
        const _: () = {
            $(assert!(same(stringify!($name), $name::SPEC.info.name), "SPEC.info.name differs from the module name");)+
        };
    };
}

collectors!(socket, cgroup, netstack, http, sockops);

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

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

/// What a collector may use while it is built.
#[derive(Clone)]
pub struct BuildContext {
    pub discovery: Arc<Discovery>,
    pub config: CollectorsConfig,
    /// Where sampled traces go (`--otlp.*`); a disabled pipeline when no
    /// endpoint is configured.
    pub otlp: Arc<pmoas_otlp::Pipeline>,
    /// What one collector hands another.
    pub companions: Arc<Companions>,
}

/// A table one collector's kernel side fills for another collector's series.
pub type CompanionTable = Box<dyn fold::SummedTable<pmoas_bpf::types::SocketKey, pmoas_bpf::types::SocketCounters>>;

/// The one place where collectors meet: each is built and fails alone, so
/// what one fills for another is handed over here, and read only if both run.
#[derive(Default)]
pub struct Companions {
    /// The sockops collector's bytes of closed connections that went by
    /// redirect, which TCP's counters never saw, keyed like the socket
    /// collector's counters: the socket collector adds them to its byte
    /// counts. `None` while sockops is not running.
    sockops_closed_bytes: Mutex<Option<CompanionTable>>,
    /// Set by the socket collector: it reads (and cleans) that table.
    socket_reads_closed_bytes: std::sync::atomic::AtomicBool,
}

impl Companions {
    /// The sockops collector's closed-bytes table (`None`: not running).
    pub fn lock_closed_bytes(&self) -> MutexGuard<'_, Option<CompanionTable>> {
        self.sockops_closed_bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The socket collector says it folds the closed-bytes table.
    pub fn socket_reads_closed_bytes(&self) {
        self.socket_reads_closed_bytes.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Without a socket collector to fold it, the closed-bytes table is
    /// cleaned here: keys whose workload discovery no longer knows go.
    pub fn forget_gone_closed_bytes(&self, names: &dyn fold::Names) {
        if self.socket_reads_closed_bytes.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut guard = self.lock_closed_bytes();
        let Some(table) = guard.as_mut() else { return };
        let Ok(entries) = table.entries() else { return };
        for (key, _) in entries {
            if matches!(names.lookup(key.cgroup_id), pmoas_discovery::Lookup::Unknown) {
                table.remove(&key);
            }
        }
    }
}

/// Builds (loads and attaches) one collector by name.
pub fn build(name: &str, ctx: &BuildContext) -> Result<Arc<dyn Collector>, BuildError> {
    let spec = SPECS.iter().find(|s| s.info.name == name).ok_or_else(|| UnknownCollector(name.to_string()))?;
    (spec.build)(ctx)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program a collector names exists in its object, and every
    /// program of the object is attached by some entry of its table.
    #[test]
    fn every_collectors_program_table_matches_its_object() {
        for spec in SPECS {
            let name = spec.info.name;
            let obj = aya_obj::Object::parse(spec.object).unwrap_or_else(|e| panic!("{name}'s object: {e}"));
            let names: Vec<String> = obj.programs.keys().cloned().collect();
            for p in spec.programs {
                assert!(names.contains(&p.program.to_string()), "{} not in {name}'s object ({names:?})", p.program);
            }
            for n in &names {
                assert!(spec.programs.iter().any(|p| p.program == n), "{n} is in {name}'s object but never attached");
            }
        }
    }
}
