//! A pool of workers: who is ready (watched through each worker's gRPC health stream, not
//! polled) and how many queries each is running, so dispatch can pick the least loaded.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::DispatchError;
use super::connect;
use quiver_core::protocol::MAX_MESSAGE_BYTES;

/// How long to wait before re-opening a health stream that broke; doubles up to the maximum.
const HEALTH_RETRY_MIN: Duration = Duration::from_millis(100);
const HEALTH_RETRY_MAX: Duration = Duration::from_secs(2);
/// Unread bytes the gateway buffers per query before the worker must wait for the client.
const STREAM_WINDOW: u32 = 2 << 20;
/// The HTTP/2 maximum: the connection never limits a stream before its own window does.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// One worker as the gateway sees it.
#[derive(Debug)]
pub struct Worker {
    endpoint: String,
    /// The connection's settings, for the io threads' own connections.
    connection: Endpoint,
    /// Names this worker in the io threads' connection maps.
    id: u64,
    /// Dropped with the worker, so io threads can drop their connections to it.
    alive: Arc<()>,
    /// Set when the worker closed a new fetch connection without answering (a worker that does
    /// not speak the exchange, or one that died): its DoGets go over gRPC until then.
    fetch_refused: std::sync::Mutex<Option<Instant>>,
    channel: Channel,
    ready: AtomicBool,
    in_flight: AtomicUsize,
    /// Set after a transport failure: out of rotation until then, doubling while it repeats.
    suspect: std::sync::Mutex<Option<Suspect>>,
    health: std::sync::Mutex<Option<JoinHandle<()>>>,
}

thread_local! {
    /// Each io thread's connections to workers, by worker id.
    static THREAD_CHANNELS: std::cell::RefCell<HashMap<u64, (Weak<()>, Channel)>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Source of worker ids.
static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(0);

/// A worker whose connection failed: skipped until `until`, then tried again.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    until: Instant,
    backoff: Duration,
}

/// How long a worker that refused the fetch exchange gets its DoGets over gRPC.
const FETCH_REFUSED_FOR: Duration = Duration::from_secs(60);

/// First pause after a transport failure; it doubles on each further failure up to the maximum.
const SUSPECT_MIN: Duration = Duration::from_millis(250);
const SUSPECT_MAX: Duration = Duration::from_secs(5);

impl Worker {
    /// The worker's URL, e.g. `http://127.0.0.1:50061`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Names this worker in the io threads' connection maps.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Gone once the worker is dropped: io threads drop their connections to it then.
    pub(crate) fn alive(&self) -> Weak<()> {
        Arc::downgrade(&self.alive)
    }

    /// Whether DoGets to this worker go over gRPC for now because it refused the fetch
    /// exchange.
    pub(crate) fn fetch_refused(&self) -> bool {
        self.fetch_refused
            .lock()
            .expect("fetch refused")
            .is_some_and(|until| Instant::now() < until)
    }

    /// Records that the worker closed a new fetch connection unanswered: gRPC carries its
    /// DoGets for a while, then the exchange is tried again (the worker may have been
    /// restarting, or replaced by a newer version).
    pub(crate) fn refuse_fetch(&self) {
        let mut until = self.fetch_refused.lock().expect("fetch refused");
        if until.is_none_or(|u| u <= Instant::now()) {
            tracing::warn!(worker = %self.endpoint, "worker closed a fetch connection unanswered; using gRPC for its queries for a while");
        }
        *until = Some(Instant::now() + FETCH_REFUSED_FOR);
    }

    /// `host:port` of the worker's Flight port.
    pub(crate) fn authority(&self) -> &str {
        authority_of(&self.endpoint)
    }

    /// Whether the worker last reported SERVING.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Queries the gateway is running on it now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A Flight client to the worker: on a gateway io thread over that thread's own HTTP/2
    /// connection (so a query never leaves its thread), elsewhere over the shared one.
    pub fn client(&self) -> FlightServiceClient<Channel> {
        let channel = if crate::io_threads::is_current() {
            self.thread_channel()
        } else {
            self.channel.clone()
        };
        FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// This io thread's connection to the worker, opened (lazily) on first use. Opening one
    /// also drops the thread's connections to workers that are gone.
    fn thread_channel(&self) -> Channel {
        THREAD_CHANNELS.with(|channels| {
            let mut channels = channels.borrow_mut();
            if let Some((_, channel)) = channels.get(&self.id) {
                return channel.clone();
            }
            channels.retain(|_, (alive, _)| alive.strong_count() > 0);
            let channel = connect::channel(&self.connection, self.authority());
            channels.insert(self.id, (Arc::downgrade(&self.alive), channel.clone()));
            channel
        })
    }

    /// The worker's shared HTTP/2 connection, for its other services (health).
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Counts one query against this worker until the guard drops.
    pub fn start_query(self: &Arc<Self>) -> WorkerLoad {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        WorkerLoad {
            worker: self.clone(),
        }
    }

    /// Takes the worker out of rotation for a while after a transport failure. It comes back
    /// by itself: when the pause ends it is tried again, and an answer clears it; a dead
    /// worker's health stream breaks and marks it not ready anyway.
    pub fn mark_failed(&self) {
        let mut suspect = self.suspect.lock().expect("suspect");
        let backoff = suspect.map_or(SUSPECT_MIN, |s| (s.backoff * 2).min(SUSPECT_MAX));
        *suspect = Some(Suspect {
            until: Instant::now() + backoff,
            backoff,
        });
    }

    /// The worker answered a call: whatever failed before has healed.
    pub fn answered(&self) {
        let mut suspect = self.suspect.lock().expect("suspect");
        if suspect.is_some() {
            *suspect = None;
        }
    }

    /// Ready, and not paused after a transport failure.
    fn available(&self, now: Instant) -> bool {
        self.is_ready()
            && self
                .suspect
                .lock()
                .expect("suspect")
                .is_none_or(|s| s.until <= now)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(task) = self.health.lock().expect("health lock").take() {
            task.abort();
        }
    }
}

/// One query's claim on a worker; releases it on drop, however the query ends.
#[derive(Debug)]
pub struct WorkerLoad {
    worker: Arc<Worker>,
}

impl WorkerLoad {
    /// The worker carrying the query.
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }
}

impl Drop for WorkerLoad {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The workers of one pool.
#[derive(Debug)]
pub struct WorkerPool {
    name: String,
    workers: RwLock<Vec<Arc<Worker>>>,
    /// Bumped whenever membership or readiness changes, for waiters such as `quiver up`.
    changed: watch::Sender<u64>,
    next: AtomicUsize,
    /// Calls held while the pool wakes (no ready worker yet), reported as demand; watched so
    /// a local scaler can wake the pool at once rather than at its next sample.
    waiting: Arc<watch::Sender<usize>>,
}

/// One call held while its pool wakes; counted in [`WorkerPool::waiting`] until dropped.
#[derive(Debug)]
pub struct Waiting {
    count: Arc<watch::Sender<usize>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n -= 1);
    }
}

impl WorkerPool {
    /// An empty pool.
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            workers: RwLock::new(Vec::new()),
            changed: watch::channel(0).0,
            next: AtomicUsize::new(0),
            waiting: Arc::new(watch::channel(0).0),
        })
    }

    /// Counts one call as waiting for the pool to wake until the guard drops, so the demand
    /// report shows it and the scaler wakes the pool.
    pub fn start_waiting(&self) -> Waiting {
        self.waiting.send_modify(|n| *n += 1);
        Waiting {
            count: self.waiting.clone(),
        }
    }

    /// Calls waiting now for a ready worker of this pool.
    pub fn waiting(&self) -> usize {
        *self.waiting.borrow()
    }

    /// A receiver that changes whenever the number of waiting calls does.
    pub fn subscribe_waiting(&self) -> watch::Receiver<usize> {
        self.waiting.subscribe()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a worker and starts watching its health. It takes queries once it reports SERVING.
    pub fn add(self: &Arc<Self>, endpoint: &str) -> Result<Arc<Worker>, DispatchError> {
        let url = normalise_endpoint(endpoint);
        let connection = Endpoint::from_shared(url.clone())
            .map_err(|e| DispatchError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?
            // Every query to a worker shares this one connection. A client that stops reading
            // must stall only its own query: each stream may buffer STREAM_WINDOW unread bytes,
            // and the connection window is so large that buffered streams never exhaust it.
            // (An adaptive window sets both to the same size, so one slow reader would block
            // every other query on the worker.)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let worker = Arc::new(Worker {
            channel: connect::channel(&connection, authority_of(&url)),
            endpoint: url,
            connection,
            id: NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            fetch_refused: std::sync::Mutex::new(None),
            ready: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            suspect: std::sync::Mutex::new(None),
            health: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(watch_health(Arc::downgrade(self), Arc::downgrade(&worker)));
        *worker.health.lock().expect("health lock") = Some(task);
        self.workers
            .write()
            .expect("pool lock")
            .push(worker.clone());
        self.notify();
        Ok(worker)
    }

    /// Removes a worker (it exited, or is being drained); running queries keep their stream.
    pub fn remove(&self, endpoint: &str) {
        let url = normalise_endpoint(endpoint);
        self.workers
            .write()
            .expect("pool lock")
            .retain(|w| w.endpoint != url);
        self.notify();
    }

    /// Makes the pool's members exactly `endpoints` (a discovery's current view): adds the new
    /// ones and removes the rest at once, so a terminating pod gets no further query while its
    /// running queries keep their streams. Endpoints that are not valid URLs are skipped.
    pub fn set_endpoints<'a>(self: &Arc<Self>, endpoints: impl IntoIterator<Item = &'a str>) {
        let wanted: BTreeSet<String> = endpoints.into_iter().map(normalise_endpoint).collect();
        let current: BTreeSet<String> = self.workers().iter().map(|w| w.endpoint.clone()).collect();
        for gone in current.difference(&wanted) {
            tracing::info!(pool = %self.name, worker = %gone, "worker left the pool");
            self.remove(gone);
        }
        for new in wanted.difference(&current) {
            match self.add(new) {
                Ok(_) => tracing::info!(pool = %self.name, worker = %new, "worker joined the pool"),
                Err(e) => tracing::warn!(pool = %self.name, error = %e, "skipping a worker"),
            }
        }
    }

    /// The ready worker with the fewest running queries, skipping `exclude` (the worker that
    /// just failed this query). Ties rotate so equal workers share the load.
    pub fn pick(&self, exclude: Option<&Arc<Worker>>) -> Result<Arc<Worker>, DispatchError> {
        let workers = self.workers.read().expect("pool lock");
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = workers.len();
        let now = Instant::now();
        let best = (0..n)
            .map(|i| &workers[(start + i) % n.max(1)])
            .filter(|w| w.available(now))
            .filter(|w| exclude.is_none_or(|x| !Arc::ptr_eq(x, w)))
            .min_by_key(|w| w.in_flight());
        best.cloned().ok_or_else(|| DispatchError::NoReadyWorker {
            pool: self.name.clone(),
            workers: n,
        })
    }

    /// The member at `endpoint` (in any spelling `add` accepts), if any.
    pub fn worker(&self, endpoint: &str) -> Option<Arc<Worker>> {
        let url = normalise_endpoint(endpoint);
        self.workers
            .read()
            .expect("pool lock")
            .iter()
            .find(|w| w.endpoint == url)
            .cloned()
    }

    /// Workers in the pool now.
    pub fn workers(&self) -> Vec<Arc<Worker>> {
        self.workers.read().expect("pool lock").clone()
    }

    /// Ready workers now.
    pub fn ready_count(&self) -> usize {
        self.workers
            .read()
            .expect("pool lock")
            .iter()
            .filter(|w| w.is_ready())
            .count()
    }

    /// Queries running on the pool now.
    pub fn in_flight(&self) -> usize {
        self.workers
            .read()
            .expect("pool lock")
            .iter()
            .map(|w| w.in_flight())
            .sum()
    }

    /// Resolves when at least `n` workers are ready.
    pub async fn wait_ready(&self, n: usize) {
        self.wait_until(|pool| pool.ready_count() >= n).await
    }

    /// Resolves once `condition` holds, re-checking on every membership or readiness change.
    pub async fn wait_until(&self, condition: impl Fn(&Self) -> bool) {
        let mut rx = self.changed.subscribe();
        while !condition(self) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A receiver that changes whenever membership or readiness does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks `worker` ready as its health stream would (tests of callers that wait for it).
    #[cfg(test)]
    pub(super) fn set_ready_for_test(self: &Arc<Self>, worker: &Arc<Worker>) {
        set_ready(&Arc::downgrade(self), &Arc::downgrade(worker), true);
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// `host:port` of a worker's URL.
fn authority_of(url: &str) -> &str {
    url.strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Accepts `host:port`, `grpc://host:port` or `http://host:port`.
fn normalise_endpoint(endpoint: &str) -> String {
    let rest = endpoint
        .strip_prefix("grpc://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    format!("http://{rest}")
}

/// Follows a worker's health stream for as long as the worker is in a pool.
async fn watch_health(pool: Weak<WorkerPool>, worker: Weak<Worker>) {
    let mut backoff = HEALTH_RETRY_MIN;
    loop {
        let Some(channel) = worker.upgrade().map(|w| w.channel.clone()) else {
            return;
        };
        let stream = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if let Ok(response) = stream {
            let mut stream = response.into_inner();
            while let Some(Ok(update)) = stream.next().await {
                backoff = HEALTH_RETRY_MIN;
                let serving = update.status == ServingStatus::Serving as i32;
                if !set_ready(&pool, &worker, serving) {
                    return;
                }
            }
        }
        if !set_ready(&pool, &worker, false) {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(HEALTH_RETRY_MAX);
    }
}

/// Records readiness; false when the worker or pool is gone and watching should stop.
fn set_ready(pool: &Weak<WorkerPool>, worker: &Weak<Worker>, ready: bool) -> bool {
    let (Some(pool), Some(worker)) = (pool.upgrade(), worker.upgrade()) else {
        return false;
    };
    if worker.ready.swap(ready, Ordering::AcqRel) != ready {
        tracing::info!(pool = %pool.name, worker = %worker.endpoint, ready, "worker readiness changed");
        pool.notify();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn picks_least_loaded_ready_worker() {
        let pool = WorkerPool::new("p");
        let a = pool.add("127.0.0.1:1").unwrap();
        let b = pool.add("grpc://127.0.0.1:2").unwrap();
        assert!(matches!(
            pool.pick(None),
            Err(DispatchError::NoReadyWorker { workers: 2, .. })
        ));
        a.ready.store(true, Ordering::Release);
        b.ready.store(true, Ordering::Release);
        let _load = a.start_query();
        for _ in 0..4 {
            assert!(Arc::ptr_eq(&pool.pick(None).unwrap(), &b));
        }
        assert!(Arc::ptr_eq(&pool.pick(Some(&b)).unwrap(), &a));
        b.mark_failed();
        assert!(Arc::ptr_eq(&pool.pick(None).unwrap(), &a));
        drop(_load);
        pool.remove("http://127.0.0.1:1");
        assert!(pool.pick(None).is_err());
    }

    #[tokio::test]
    async fn a_failed_worker_comes_back_by_itself() {
        let pool = WorkerPool::new("p");
        let a = pool.add("127.0.0.1:1").unwrap();
        a.ready.store(true, Ordering::Release);
        a.mark_failed();
        assert!(pool.pick(None).is_err(), "paused right after the failure");
        // The pause ends on its own: no health change is needed to try the worker again.
        let later = Instant::now() + SUSPECT_MIN;
        assert!(a.available(later));
        a.mark_failed();
        assert!(!a.available(later), "a repeated failure pauses longer");
        a.answered();
        assert!(Arc::ptr_eq(&pool.pick(None).unwrap(), &a));
    }

    #[tokio::test]
    async fn finds_a_worker_by_any_spelling_of_its_endpoint() {
        let pool = WorkerPool::new("p");
        let a = pool.add("127.0.0.1:1").unwrap();
        for spelling in ["127.0.0.1:1", "grpc://127.0.0.1:1", "http://127.0.0.1:1"] {
            assert!(
                Arc::ptr_eq(&pool.worker(spelling).unwrap(), &a),
                "{spelling}"
            );
        }
        assert!(pool.worker("127.0.0.1:2").is_none());
    }

    #[tokio::test]
    async fn set_endpoints_adds_and_removes() {
        let pool = WorkerPool::new("p");
        let a = pool.add("127.0.0.1:1").unwrap();
        a.ready.store(true, Ordering::Release);
        pool.set_endpoints(["grpc://127.0.0.1:1", "127.0.0.1:2"]);
        fn endpoints(pool: &WorkerPool) -> Vec<String> {
            pool.workers()
                .iter()
                .map(|w| w.endpoint().to_owned())
                .collect()
        }
        assert_eq!(
            endpoints(&pool),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        // The kept worker is the same one, with its readiness and load.
        assert!(Arc::ptr_eq(&pool.workers()[0], &a));
        pool.set_endpoints(["http://127.0.0.1:2"]);
        assert_eq!(endpoints(&pool), ["http://127.0.0.1:2"]);
        assert!(pool.pick(None).is_err(), "a removed worker is never picked");
        pool.set_endpoints(Vec::<&str>::new());
        assert!(pool.workers().is_empty());
    }

    #[tokio::test]
    async fn waiting_guard_counts_until_dropped() {
        let pool = WorkerPool::new("p");
        let a = pool.start_waiting();
        let b = pool.start_waiting();
        assert_eq!(pool.waiting(), 2);
        drop(a);
        drop(b);
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test]
    async fn load_guard_releases_on_drop() {
        let pool = WorkerPool::new("p");
        let a = pool.add("127.0.0.1:1").unwrap();
        {
            let _g = a.start_query();
            assert_eq!(pool.in_flight(), 1);
        }
        assert_eq!(pool.in_flight(), 0);
    }
}
