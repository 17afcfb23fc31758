//! Bounds on what remote clients can make the server hold: open
//! connections (kept below the file descriptor limit, so that accept never
//! fails and a scrape always finds a seat) and parallel scrapes
//! (`--web.max-requests`, like node_exporter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// File descriptors left for everything but client connections: the eBPF
/// maps, programs and links of the collectors (a few dozen), cgroup and
/// /proc files read during a scrape (one or two per blocking thread, at most
/// 16 of them), the Kubernetes and engine API clients, the runtime's own,
/// and connections already evicted whose task has not closed them yet.
pub const RESERVED_FDS: u64 = 256;

/// Below this many connections the exporter could not serve a scraper and
/// a browser at once; a descriptor limit that low fails elsewhere first.
pub const MIN_CONNECTIONS: usize = 16;

/// The connection cap to use: `configured`, lowered to fit the soft
/// RLIMIT_NOFILE (`fd_limit`, `None` when unlimited) less [`RESERVED_FDS`].
pub fn effective_max_connections(configured: usize, fd_limit: Option<u64>) -> usize {
    let configured = configured.max(1);
    match fd_limit {
        None => configured,
        Some(soft) => {
            let room = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            configured.min(room.max(MIN_CONNECTIONS))
        }
    }
}

/// The soft RLIMIT_NOFILE of this process, `None` if unlimited or unknown.
pub fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The open connections, and who makes room when they reach the cap.
pub struct Connections {
    cap: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// A logical clock: only the order of events matters, and a counter
    /// cannot tie the way two reads of a clock can.
    tick: u64,
    open: HashMap<u64, Entry>,
}

impl Table {
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

struct Entry {
    /// When it was accepted or its last response finished, on the table's
    /// clock: the smallest has gone longest without a complete request.
    since: u64,
    /// Requests being answered (hyper's http1 serves one at a time).
    busy: u32,
    evict: Arc<Notify>,
}

/// What [`Connections::admit`] did.
pub enum Admission {
    /// Room was free.
    Admitted(Slot),
    /// Room was made by evicting the connection idle longest.
    Evicted(Slot),
    /// Every connection is in the middle of a request: the newcomer is
    /// turned away (only possible when the cap is below the parallel
    /// requests; busy connections are bounded by `--web.max-requests` for
    /// scrapes and are short for every other page).
    Refused,
}

impl Connections {
    pub fn new(cap: usize) -> Arc<Connections> {
        Arc::new(Connections { cap: cap.max(1), table: Mutex::new(Table::default()) })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent whatever panicked while holding it.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A seat for a newly accepted connection. At the cap, the connection
    /// that has gone longest without a complete request gives up its seat:
    /// idle keep-alive connections and clients that never send a request
    /// lose theirs before a scraper that is about to send one. Refusing the
    /// newcomer instead would let anyone who holds the cap in idle
    /// connections keep every scrape out until the header read timeout.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut t = self.lock();
        let mut evicted = false;
        if t.open.len() >= self.cap {
            let victim = t.open.iter().filter(|(_, e)| e.busy == 0).min_by_key(|(_, e)| e.since).map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Admission::Refused;
            };
            if let Some(e) = t.open.remove(&victim) {
                e.evict.notify_one();
            }
            evicted = true;
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = Arc::new(Notify::new());
        let since = t.tick();
        t.open.insert(id, Entry { since, busy: 0, evict: evict.clone() });
        let slot = Slot { table: self.clone(), id, evict };
        if evicted { Admission::Evicted(slot) } else { Admission::Admitted(slot) }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry, u64)) {
        let mut t = self.lock();
        let now = t.tick();
        if let Some(e) = t.open.get_mut(&id) {
            f(e, now);
        }
    }
}

/// One connection's seat; given up when dropped.
pub struct Slot {
    table: Arc<Connections>,
    id: u64,
    evict: Arc<Notify>,
}

impl Slot {
    /// Resolves once the connection was chosen to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// For the request handler: marks requests begun and finished.
    pub fn tracker(&self) -> Tracker {
        Tracker { table: self.table.clone(), id: self.id }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().open.remove(&self.id);
    }
}

#[derive(Clone)]
pub struct Tracker {
    table: Arc<Connections>,
    id: u64,
}

impl Tracker {
    /// A request has arrived complete; the connection is busy until the
    /// returned guard is dropped (with the response body, once hyper has
    /// taken all of it).
    pub fn begin(&self) -> InFlight {
        self.table.update(self.id, |e, _| e.busy += 1);
        InFlight(self.clone())
    }
}

pub struct InFlight(Tracker);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.table.update(self.0.id, |e, now| {
            e.busy = e.busy.saturating_sub(1);
            e.since = now;
        });
    }
}

/// `--web.max-requests`: scrapes of the metrics page answered at once;
/// and turns: how many of them build their metric set at the same time.
pub struct Scrapes {
    max: usize,
    permits: Arc<Semaphore>,
    turns: Arc<Semaphore>,
}

impl Scrapes {
    /// `max` seats, `turns` of them collecting and encoding at once.
    pub fn new(max: usize, turns: usize) -> Scrapes {
        // 0 is refused by the configuration; 1 is the least that serves.
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        let turns = turns.clamp(1, max);
        Scrapes { max, permits: Arc::new(Semaphore::new(max)), turns: Arc::new(Semaphore::new(turns)) }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A seat for one scrape, or `None` when all are taken: the caller
    /// answers 503 at once instead of queueing, so a pile of slow scrapes
    /// cannot grow memory and latency without bound.
    pub fn try_begin(&self) -> Option<ScrapePermit> {
        self.permits.clone().try_acquire_owned().ok().map(|p| ScrapePermit { _permit: p })
    }

    /// Scrapes in progress.
    pub fn running(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Waits for a turn to collect and encode, first come first served.
    /// A scrape's metric set (every series as labelled samples, built in
    /// the blocking pool) takes about three times the memory of its page:
    /// ten of them at once made most of a 94 MiB peak. The work is
    /// CPU-bound, so turns up to the number of cores cost no throughput.
    pub async fn turn(&self) -> Turn {
        // The semaphore is never closed; without a permit the scrape would
        // still be correct, only unbounded.
        Turn { _permit: self.turns.clone().acquire_owned().await.ok() }
    }
}

/// Held until the scrape's response body is dropped.
pub struct ScrapePermit {
    _permit: OwnedSemaphorePermit,
}

/// Held while a scrape collects and encodes.
pub struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn connection_cap_fits_the_descriptor_limit() {
        assert_eq!(effective_max_connections(512, None), 512);
        assert_eq!(effective_max_connections(512, Some(1024)), 512);
        assert_eq!(effective_max_connections(5000, Some(1024)), 1024 - RESERVED_FDS as usize);
        assert_eq!(effective_max_connections(5000, Some(100)), MIN_CONNECTIONS);
        assert_eq!(effective_max_connections(4, Some(100)), 4);
        assert_eq!(effective_max_connections(0, Some(1 << 20)), 1);
    }

    fn slot(a: Admission) -> Slot {
        match a {
            Admission::Admitted(s) | Admission::Evicted(s) => s,
            Admission::Refused => panic!("refused"),
        }
    }

    /// Has the slot been told to go? (Notify keeps the wake-up for a
    /// later waiter, so this does not depend on timing.)
    fn was_evicted(s: &Slot) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(1), s.evicted()).await.is_ok() })
    }

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room() {
        let conns = Connections::new(3);
        let oldest = slot(conns.admit());
        let busy_but_older = slot(conns.admit());
        let newer = slot(conns.admit());
        // `oldest` finished a request just now: it is the freshest idle one.
        drop(oldest.tracker().begin());
        let request = busy_but_older.tracker().begin();

        let a = conns.admit();
        assert!(matches!(a, Admission::Evicted(_)));
        assert_eq!(conns.open(), 3);
        assert!(was_evicted(&newer), "the one idle longest goes");
        assert!(!was_evicted(&oldest));
        assert!(!was_evicted(&busy_but_older), "a connection in a request is never evicted");

        // Seats given up on drop; an evicted slot's drop is harmless.
        drop(newer);
        assert_eq!(conns.open(), 3);
        drop(a);
        assert_eq!(conns.open(), 2);
        drop(request);
        drop(busy_but_older);
        drop(oldest);
        assert_eq!(conns.open(), 0);
    }

    #[test]
    fn when_every_connection_is_busy_the_newcomer_is_refused() {
        let conns = Connections::new(2);
        let (a, b) = (slot(conns.admit()), slot(conns.admit()));
        let (ra, rb) = (a.tracker().begin(), b.tracker().begin());
        assert!(matches!(conns.admit(), Admission::Refused));
        drop(rb);
        assert!(matches!(conns.admit(), Admission::Evicted(_)));
        assert!(was_evicted(&b));
        drop(ra);
    }

    #[test]
    fn scrapes_beyond_the_limit_are_refused_until_one_ends() {
        let scrapes = Scrapes::new(2, 2);
        let first = scrapes.try_begin().expect("first");
        let second = scrapes.try_begin().expect("second");
        assert!(scrapes.try_begin().is_none());
        assert_eq!(scrapes.running(), 2);
        drop(first);
        let third = scrapes.try_begin().expect("a seat is free again");
        drop((second, third));
        assert_eq!(scrapes.running(), 0);
        assert_eq!(Scrapes::new(0, 4).max(), 1);
    }

    #[test]
    fn turns_are_taken_one_after_the_other() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let scrapes = Scrapes::new(40, 1);
            let first = scrapes.turn().await;
            let waiting = tokio::time::timeout(Duration::from_millis(1), scrapes.turn()).await;
            assert!(waiting.is_err(), "a second turn while the first is held");
            drop(first);
            let second = tokio::time::timeout(Duration::from_millis(1), scrapes.turn()).await;
            assert!(second.is_ok(), "the turn is free again");
        });
    }
}
