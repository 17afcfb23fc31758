//! The two seams between a collector's folding (kernel map entries ->
//! labelled series) and the machine, so that folding is tested without root
//! on fixture data, as node_exporter tests its collectors on fixture files:
//!
//! - [`Names`]: who owns a cgroup id. [`Discovery`] in production, a
//!   [`FixtureNames`] map in tests.
//! - [`SummedTable`]: a per-CPU hash map read with its CPUs summed, and
//!   entries removed. The kernel's map ([`PerCpuTable`]) in production, a
//!   [`FixtureTable`] in tests.

use std::collections::HashMap;
use std::sync::Arc;

use aya::maps::{MapData, PerCpuHashMap};
use pmoas_discovery::{Discovery, Lookup, Workload};

/// Who owns a cgroup id, at scrape time.
pub trait Names: Send + Sync {
    fn lookup(&self, id: u64) -> Lookup;
}

impl Names for Discovery {
    fn lookup(&self, id: u64) -> Lookup {
        Discovery::lookup(self, id)
    }
}

/// Fixed names for tests: ids not in the map are [`Lookup::Unknown`].
#[derive(Default)]
pub struct FixtureNames(pub HashMap<u64, Lookup>);

impl FixtureNames {
    pub fn live(mut self, id: u64, w: Workload) -> FixtureNames {
        self.0.insert(id, Lookup::Live(Arc::new(w)));
        self
    }

    pub fn gone(mut self, id: u64, w: Workload) -> FixtureNames {
        self.0.insert(id, Lookup::Gone(Arc::new(w)));
        self
    }
}

impl Names for FixtureNames {
    fn lookup(&self, id: u64) -> Lookup {
        self.0.get(&id).cloned().unwrap_or(Lookup::Unknown)
    }
}

/// A per-CPU hash map as a collector reads it.
pub trait SummedTable<K, V>: Send {
    /// Every entry, its CPUs summed.
    fn entries(&self) -> anyhow::Result<Vec<(K, V)>>;
    /// Forgets an entry (a workload gone past its grace period).
    fn remove(&mut self, key: &K);
}

/// The kernel's map, summed with `merge`.
pub struct PerCpuTable<K: aya::Pod, V: aya::Pod> {
    map: PerCpuHashMap<MapData, K, V>,
    merge: fn(&mut V, &V),
}

impl<K: aya::Pod, V: aya::Pod> PerCpuTable<K, V> {
    pub fn new(map: PerCpuHashMap<MapData, K, V>, merge: fn(&mut V, &V)) -> PerCpuTable<K, V> {
        PerCpuTable { map, merge }
    }
}

impl<K: aya::Pod + Send, V: aya::Pod + Default + Send> SummedTable<K, V> for PerCpuTable<K, V> {
    fn entries(&self) -> anyhow::Result<Vec<(K, V)>> {
        crate::ebpf::read_summed(&self.map, self.merge)
    }

    fn remove(&mut self, key: &K) {
        // Already gone is fine: the kernel may have deleted it meanwhile.
        let _ = self.map.remove(key);
    }
}

/// Entries given by a test; removals are recorded.
#[derive(Clone, Debug, Default)]
pub struct FixtureTable<K, V> {
    pub entries: Vec<(K, V)>,
    pub removed: Vec<K>,
}

impl<K: Clone + PartialEq + Send, V: Clone + Send> SummedTable<K, V> for FixtureTable<K, V> {
    fn entries(&self) -> anyhow::Result<Vec<(K, V)>> {
        Ok(self.entries.clone())
    }

    fn remove(&mut self, key: &K) {
        self.entries.retain(|(k, _)| k != key);
        self.removed.push(key.clone());
    }
}
