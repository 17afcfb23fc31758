//! The registry: which collectors are enabled, their state, and scrapes.
//!
//! Collectors start concurrently at start-up and may fail alone. A scrape
//! asks every selected, running collector at once, each on its own blocking
//! thread, and waits for all of them up to one deadline; a collector that
//! errors or misses the deadline gets `pmoas_scrape_collector_success 0` and
//! the scrape answers with everything else. Scrapes may overlap (two
//! Prometheus servers); but a collector that missed a deadline and is still
//! running is not asked again until it returns, so a hung collector costs one
//! thread, not one per scrape.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::ebpf::ProgramStatus;
use crate::metrics::{Desc, MetricSet};
use crate::{BuildContext, Collector, CollectorInfo};

pub const SCRAPE_SUCCESS: Desc = Desc::gauge(
    "pmoas_scrape_collector_success",
    "Whether a collector answered this scrape (1) or failed or timed out (0).",
);
pub const SCRAPE_DURATION: Desc =
    Desc::gauge("pmoas_scrape_collector_duration_seconds", "Time a collector took to answer this scrape.");

/// Where a collector is in its life.
#[derive(Clone)]
pub enum CollectorState {
    /// Loading and attaching its programs.
    Starting,
    Running(Arc<dyn Collector>),
    /// Could not start; `programs` says which programs failed and why.
    Failed {
        error: String,
        programs: Vec<ProgramStatus>,
    },
}

impl CollectorState {
    /// A word for the landing page and /readyz.
    pub fn label(&self) -> &'static str {
        match self {
            CollectorState::Starting => "starting",
            CollectorState::Running(_) => "running",
            CollectorState::Failed { .. } => "failed",
        }
    }
}

struct Slot {
    info: &'static CollectorInfo,
    state: RwLock<CollectorState>,
    /// A call missed its deadline and has not returned yet.
    hung: Arc<AtomicBool>,
}

/// The enabled collectors.
pub struct Registry {
    slots: Vec<Slot>,
}

/// Which collectors one scrape asks (`collect[]=` / `exclude[]=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrapeFilter {
    include: Option<Vec<String>>,
    exclude: Vec<String>,
}

impl ScrapeFilter {
    /// All enabled collectors.
    pub fn all() -> ScrapeFilter {
        ScrapeFilter::default()
    }

    /// Like node_exporter: `collect[]` keeps only the named collectors,
    /// `exclude[]` drops them; not both, and only enabled collectors.
    pub fn new(collect: Vec<String>, exclude: Vec<String>, registry: &Registry) -> Result<ScrapeFilter, String> {
        if !collect.is_empty() && !exclude.is_empty() {
            return Err("collect[] and exclude[] cannot be used together".into());
        }
        for name in collect.iter().chain(exclude.iter()) {
            if !registry.slots.iter().any(|s| s.info.name == name) {
                return Err(format!(
                    "collector `{name}` is not enabled; enabled collectors: {}",
                    registry.names().join(", ")
                ));
            }
        }
        Ok(ScrapeFilter { include: (!collect.is_empty()).then_some(collect), exclude })
    }

    fn selects(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|inc| inc.iter().any(|n| n == name)) && !self.exclude.iter().any(|n| n == name)
    }
}

impl Registry {
    /// A registry of these collectors, all `Starting`.
    pub fn new(collectors: &[&'static CollectorInfo]) -> Registry {
        Registry {
            slots: collectors
                .iter()
                .map(|info| Slot {
                    info,
                    state: RwLock::new(CollectorState::Starting),
                    hung: Arc::new(AtomicBool::new(false)),
                })
                .collect(),
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.slots.iter().map(|s| s.info.name).collect()
    }

    /// Name, description and state of every enabled collector.
    pub fn states(&self) -> Vec<(&'static CollectorInfo, CollectorState)> {
        self.slots.iter().map(|s| (s.info, s.state.read().unwrap_or_else(|p| p.into_inner()).clone())).collect()
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.info.name == name)
    }

    pub fn set_state(&self, name: &str, state: CollectorState) {
        if let Some(slot) = self.slot(name) {
            *slot.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        }
    }

    /// Every enabled collector has finished starting (running or failed).
    pub fn ready(&self) -> bool {
        self.states().iter().all(|(_, s)| !matches!(s, CollectorState::Starting))
    }

    /// Builds every collector on its own thread; returns at once. Each one
    /// moves from `Starting` to `Running` or `Failed` when done.
    pub fn start_all(self: &Arc<Self>, ctx: BuildContext) -> Vec<std::thread::JoinHandle<()>> {
        self.slots
            .iter()
            .map(|slot| {
                let name = slot.info.name;
                let registry = self.clone();
                let ctx = ctx.clone();
                std::thread::Builder::new()
                    .name(format!("start-{name}"))
                    .spawn(move || {
                        let started = Instant::now();
                        let state = match crate::build(name, &ctx) {
                            Ok(c) => {
                                tracing::info!(collector = name, elapsed = ?started.elapsed(), "collector started");
                                CollectorState::Running(c)
                            }
                            Err(e) => {
                                tracing::error!(collector = name, error = %e, "collector failed to start; the others carry on");
                                CollectorState::Failed { error: e.to_string(), programs: e.programs().to_vec() }
                            }
                        };
                        registry.set_state(name, state);
                    })
                    .expect("spawning a start-up thread")
            })
            .collect()
    }

    /// One scrape of the selected collectors, bounded by `timeout`.
    pub async fn scrape(&self, filter: &ScrapeFilter, timeout: Duration) -> MetricSet {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = MetricSet::new();
        out.declare(&SCRAPE_SUCCESS);
        out.declare(&SCRAPE_DURATION);

        let mut pending = Vec::new();
        for slot in self.slots.iter().filter(|s| filter.selects(s.info.name)) {
            let name = slot.info.name;
            let state = slot.state.read().unwrap_or_else(|p| p.into_inner()).clone();
            match state {
                CollectorState::Running(c) => {
                    ProgramStatus::export(&c.programs(), &mut out);
                    if slot.hung.load(Ordering::Acquire) {
                        tracing::warn!(collector = name, "collector still hangs in an earlier scrape; skipped");
                        report(&mut out, name, false, Duration::ZERO);
                        continue;
                    }
                    let (call, done) = Call::new(&slot.hung);
                    let started = Instant::now();
                    let handle = tokio::task::spawn_blocking(move || {
                        let _done = done; // marks the call finished, even on panic
                        let mut set = MetricSet::new();
                        let result = c.collect(&mut set);
                        (result, set)
                    });
                    pending.push((name, started, handle, call));
                }
                CollectorState::Failed { programs, .. } => {
                    ProgramStatus::export(&programs, &mut out);
                    report(&mut out, name, false, Duration::ZERO);
                }
                CollectorState::Starting => report(&mut out, name, false, Duration::ZERO),
            }
        }

        for (name, started, handle, call) in pending {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok((Ok(()), set))) => {
                    out.merge(set);
                    report(&mut out, name, true, started.elapsed());
                }
                Ok(Ok((Err(e), set))) => {
                    tracing::warn!(collector = name, error = %e, "collector failed this scrape");
                    // what it did gather is still worth serving
                    out.merge(set);
                    report(&mut out, name, false, started.elapsed());
                }
                Ok(Err(join)) => {
                    tracing::error!(collector = name, error = %join, "collector panicked");
                    report(&mut out, name, false, started.elapsed());
                }
                Err(_) => {
                    tracing::warn!(collector = name, ?timeout, "collector timed out; scrape answered without it");
                    call.timed_out();
                    report(&mut out, name, false, started.elapsed());
                }
            }
        }
        out
    }
}

/// One collect call, as the scrape sees it.
struct Call {
    finished: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
}

/// The same call, as the blocking task holds it: dropped when `collect`
/// returns or panics.
struct Done(Call);

impl Call {
    fn new(hung: &Arc<AtomicBool>) -> (Call, Done) {
        let finished = Arc::new(AtomicBool::new(false));
        (Call { finished: finished.clone(), hung: hung.clone() }, Done(Call { finished, hung: hung.clone() }))
    }

    /// Whichever of "finished" and "timed out" comes second decides, so
    /// the flag cannot stay set by a race.
    fn timed_out(&self) {
        self.hung.store(true, Ordering::Release);
        if self.finished.load(Ordering::Acquire) {
            self.hung.store(false, Ordering::Release);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.0.finished.store(true, Ordering::Release);
        self.0.hung.store(false, Ordering::Release);
    }
}

fn report(out: &mut MetricSet, name: &'static str, success: bool, took: Duration) {
    out.gauge(&SCRAPE_SUCCESS, vec![("collector", name.to_string())], if success { 1.0 } else { 0.0 });
    out.gauge(&SCRAPE_DURATION, vec![("collector", name.to_string())], took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Value;

    const GOOD: CollectorInfo = CollectorInfo { name: "good", help: "", default_enabled: true };
    const BAD: CollectorInfo = CollectorInfo { name: "bad", help: "", default_enabled: true };
    const SLOW: CollectorInfo = CollectorInfo { name: "slow", help: "", default_enabled: true };
    const PANICS: CollectorInfo = CollectorInfo { name: "panics", help: "", default_enabled: true };
    const DESC: Desc = Desc::gauge("pmoas_test_value", "test");

    struct Fake {
        name: &'static str,
        behaviour: fn() -> anyhow::Result<()>,
    }

    impl Collector for Fake {
        fn collect(&self, out: &mut MetricSet) -> anyhow::Result<()> {
            out.gauge(&DESC, vec![("from", self.name.to_string())], 1.0);
            (self.behaviour)()
        }
        fn programs(&self) -> Vec<ProgramStatus> {
            vec![ProgramStatus {
                collector: self.name,
                program: "p",
                hook: "tp_btf/x".into(),
                attached: true,
                error: None,
            }]
        }
    }

    fn registry() -> Registry {
        let r = Registry::new(&[&GOOD, &BAD, &SLOW, &PANICS]);
        r.set_state("good", CollectorState::Running(Arc::new(Fake { name: "good", behaviour: || Ok(()) })));
        r.set_state(
            "bad",
            CollectorState::Running(Arc::new(Fake { name: "bad", behaviour: || anyhow::bail!("broken") })),
        );
        r.set_state(
            "slow",
            CollectorState::Running(Arc::new(Fake {
                name: "slow",
                behaviour: || {
                    std::thread::sleep(Duration::from_millis(600));
                    Ok(())
                },
            })),
        );
        r.set_state("panics", CollectorState::Running(Arc::new(Fake { name: "panics", behaviour: || panic!("boom") })));
        r
    }

    fn success(m: &MetricSet, name: &str) -> Option<f64> {
        match m.get("pmoas_scrape_collector_success", &[("collector", name)]) {
            Some(Value::Gauge(v)) => Some(*v),
            _ => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_failing_slow_or_panicking_collector_never_fails_the_scrape() {
        let r = registry();
        let m = r.scrape(&ScrapeFilter::all(), Duration::from_millis(300)).await;
        assert_eq!(success(&m, "good"), Some(1.0));
        assert_eq!(success(&m, "bad"), Some(0.0));
        assert_eq!(success(&m, "slow"), Some(0.0), "timed out");
        assert_eq!(success(&m, "panics"), Some(0.0));
        assert!(m.get("pmoas_test_value", &[("from", "good")]).is_some());
        assert!(m.get("pmoas_test_value", &[("from", "bad")]).is_some(), "partial output of a failed collect is kept");
        assert!(m.get("pmoas_test_value", &[("from", "slow")]).is_none());

        // The slow one is still running: the next scrape skips it instead of
        // piling up threads.
        let m = r.scrape(&ScrapeFilter::all(), Duration::from_millis(100)).await;
        assert_eq!(success(&m, "slow"), Some(0.0));
        assert_eq!(success(&m, "good"), Some(1.0));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let m = r.scrape(&ScrapeFilter::all(), Duration::from_secs(2)).await;
        assert_eq!(success(&m, "slow"), Some(1.0), "answers again once it returned");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_scrapes_both_get_answers() {
        let r = Arc::new(Registry::new(&[&SLOW]));
        r.set_state(
            "slow",
            CollectorState::Running(Arc::new(Fake {
                name: "slow",
                behaviour: || {
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(())
                },
            })),
        );
        let all = ScrapeFilter::all();
        let (a, b) = tokio::join!(r.scrape(&all, Duration::from_secs(2)), r.scrape(&all, Duration::from_secs(2)));
        assert_eq!(success(&a, "slow"), Some(1.0));
        assert_eq!(success(&b, "slow"), Some(1.0), "two Prometheus servers may scrape at once");
    }

    #[tokio::test]
    async fn failed_and_starting_collectors_report_zero_and_their_programs() {
        let r = Registry::new(&[&GOOD, &BAD]);
        r.set_state(
            "bad",
            CollectorState::Failed {
                error: "no BTF".into(),
                programs: vec![ProgramStatus {
                    collector: "bad",
                    program: "p",
                    hook: "tp_btf/x".into(),
                    attached: false,
                    error: Some("no".into()),
                }],
            },
        );
        assert!(!r.ready(), "good is still starting");
        let m = r.scrape(&ScrapeFilter::all(), Duration::from_secs(1)).await;
        assert_eq!(success(&m, "good"), Some(0.0));
        assert_eq!(success(&m, "bad"), Some(0.0));
        assert_eq!(
            m.get("pmoas_ebpf_program_attached", &[("collector", "bad"), ("program", "p")]),
            Some(&Value::Gauge(0.0))
        );
        r.set_state("good", CollectorState::Running(Arc::new(Fake { name: "good", behaviour: || Ok(()) })));
        assert!(r.ready());
    }

    #[tokio::test]
    async fn collect_and_exclude_filters() {
        let r = registry();
        let only_good = ScrapeFilter::new(vec!["good".into()], vec![], &r).unwrap();
        let m = r.scrape(&only_good, Duration::from_secs(1)).await;
        assert_eq!(success(&m, "good"), Some(1.0));
        assert_eq!(success(&m, "bad"), None);
        let no_bad = ScrapeFilter::new(vec![], vec!["bad".into(), "slow".into(), "panics".into()], &r).unwrap();
        let m = r.scrape(&no_bad, Duration::from_secs(1)).await;
        assert_eq!(success(&m, "good"), Some(1.0));
        assert_eq!(success(&m, "bad"), None);

        let err = ScrapeFilter::new(vec!["nope".into()], vec![], &r).unwrap_err();
        assert!(err.contains("`nope` is not enabled") && err.contains("good, bad, slow, panics"), "{err}");
        assert!(ScrapeFilter::new(vec!["good".into()], vec!["bad".into()], &r).is_err());
    }
}
