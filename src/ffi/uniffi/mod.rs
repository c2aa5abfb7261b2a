//! uniffi objects for the Python, Kotlin and Swift bindings.
//!
//! The foreign API mirrors the Rust one: a [`SwarmConfig`] record holds every
//! [`SwarmBuilder`](crate::SwarmBuilder) option (with the same defaults), and a [`Swarm`] object
//! wraps one node. Every operation exists as a blocking method and, for the ones that wait on
//! I/O, as an `*_async` method (a Python coroutine, a Kotlin `suspend fun`, a Swift `async`
//! function). Both kinds run the work on the library's own multi-threaded runtime
//! ([`crate::ffi::runtime`]): blocking calls block the calling thread on it, async calls spawn
//! onto it and only await the task's handle, so no foreign executor and no fallback runtime ever
//! drives Murmur's futures.
//!
//! Events reach an [`EventListener`] implemented in the foreign language: a task on the library
//! runtime reads the event stream and calls the listener, one event at a time and in order, on a
//! thread of the runtime's blocking pool (so a listener may call back into the swarm, blocking
//! methods included).
//!
//! # Process exit
//! A library thread must never call into the foreign side, nor free a foreign object, once the
//! host has begun to exit: a Python interpreter that is finalizing ends such a thread with a
//! forced unwind, which aborts the process (`FATAL: exception not rethrown`). So:
//! - a listener is owned by its subscription's shared state, never by the delivery task, and is
//!   freed on the thread that calls `Subscription.cancel()` (or [`prepare_exit`]); when its last
//!   owner goes away on a library thread it is parked and freed by the next call from the
//!   foreign side instead;
//! - no delivery starts once the process is exiting: [`prepare_exit`] (which the Python package
//!   calls from `atexit`, while the interpreter is whole) or the C `atexit` handler the library
//!   registers (C, C++, the JVM) says so;
//! - [`prepare_exit`] also cancels every subscription (waiting for deliveries in progress) and
//!   shuts down every swarm still open.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    thread::ThreadId,
    time::{Duration, Instant},
};

use crate::{
    swarm::{DEFAULT_MAX_VALUE_SIZE, DEFAULT_SWARM_NAME},
    Error,
};

/// Everything a Murmur call can fail with. Each variant carries the library's explanatory
/// message (what went wrong and what to do about it).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum MurmurError {
    /// The key is empty, longer than 1024 bytes, or contains a NUL character.
    #[error("{0}")]
    InvalidKey(String),
    /// The value is larger than the configured maximum.
    #[error("{0}")]
    ValueTooLarge(String),
    /// The swarm was shut down; create a new one to continue.
    #[error("{0}")]
    Closed(String),
    /// Another Murmur instance has the data directory open.
    #[error("{0}")]
    Locked(String),
    /// The database cannot be read.
    #[error("{0}")]
    Corrupt(String),
    /// A filesystem or SQLite operation failed.
    #[error("{0}")]
    Storage(String),
    /// A configuration option or argument is not acceptable.
    #[error("{0}")]
    Config(String),
    /// A bootstrap ticket or node address could not be parsed.
    #[error("{0}")]
    InvalidTicket(String),
    /// Networking could not be set up.
    #[error("{0}")]
    Network(String),
    /// The operation needs `start()` first.
    #[error("{0}")]
    NotStarted(String),
    /// This node's clock is further off its peers' than the maximum clock offset: writes are
    /// refused until the system clock is fixed.
    #[error("{0}")]
    ClockSkew(String),
    /// The binding layer itself failed (the runtime could not start, a task panicked).
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for MurmurError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidKey { .. } => MurmurError::InvalidKey(msg),
            Error::ValueTooLarge { .. } => MurmurError::ValueTooLarge(msg),
            Error::Closed => MurmurError::Closed(msg),
            Error::Locked { .. } => MurmurError::Locked(msg),
            Error::Corrupt { .. } => MurmurError::Corrupt(msg),
            Error::Storage(_) => MurmurError::Storage(msg),
            Error::Config(_) => MurmurError::Config(msg),
            Error::InvalidTicket { .. } => MurmurError::InvalidTicket(msg),
            Error::Network(_) => MurmurError::Network(msg),
            Error::NotStarted => MurmurError::NotStarted(msg),
            Error::ClockSkew { .. } => MurmurError::ClockSkew(msg),
        }
    }
}

impl From<std::io::Error> for MurmurError {
    fn from(e: std::io::Error) -> Self {
        MurmurError::Internal(format!("cannot start Murmur's runtime: {e}"))
    }
}

type Result<T, E = MurmurError> = std::result::Result<T, E>;

/// Which relay servers help peers behind NATs reach each other.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum RelayMode {
    /// iroh's public relay servers.
    Default,
    /// No relays: only direct connections.
    Disabled,
    /// Your own relay server, by URL.
    Custom {
        /// For example `https://relay.example.com`.
        url: String,
    },
}

/// What a write that returned survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Durability {
    /// Power loss (SQLite `synchronous=FULL`).
    Full,
    /// A crash of the process, not of the machine (`synchronous=NORMAL`).
    Process,
}

/// Every option of the Rust `SwarmBuilder`, with the same defaults.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SwarmConfig {
    /// The data directory (created if missing).
    #[uniffi(default = "./murmur_data")]
    pub storage_path: String,
    /// The 32-byte secret shared by the members of the swarm. At most one of `swarm_key` and
    /// `swarm_name` may be set; with neither, the default swarm name is used.
    #[uniffi(default = None)]
    pub swarm_key: Option<Vec<u8>>,
    /// Derives the swarm key from a name: an open swarm anyone knowing the name can join.
    #[uniffi(default = None)]
    pub swarm_name: Option<String>,
    /// Peers to join through: tickets from `ticket()`, `<node-id>@<ip>:<port>`, or node IDs.
    #[uniffi(default = [])]
    pub bootstrap: Vec<String>,
    /// The local UDP socket address, such as `"127.0.0.1:0"`. Default: all interfaces, a
    /// random port.
    #[uniffi(default = None)]
    pub bind_addr: Option<String>,
    /// Relay servers to use. Default (`None`): iroh's public relays.
    #[uniffi(default = None)]
    pub relay_mode: Option<RelayMode>,
    /// Finds peers of the same swarm on the LAN with mDNS.
    #[uniffi(default = true)]
    pub local_discovery: bool,
    /// How often the leader sends heartbeats, in milliseconds.
    #[uniffi(default = 2000)]
    pub heartbeat_interval_ms: u64,
    /// How long without a heartbeat before the leader is presumed gone, in milliseconds; must
    /// be greater than the heartbeat interval.
    #[uniffi(default = 5000)]
    pub leader_timeout_ms: u64,
    /// What a returned write survives. Default (`None`): `Durability.Full`.
    #[uniffi(default = None)]
    pub durability: Option<Durability>,
    /// Largest value accepted by `put`, in bytes (at most 8 MiB).
    #[uniffi(default = 1048576)]
    pub max_value_size: u64,
    /// Most peers connected at once.
    #[uniffi(default = 64)]
    pub max_peers: u32,
    /// Largest offset between this node's clock and the median of its peers' at which it
    /// still accepts writes, in milliseconds; beyond it writes fail with `ClockSkew`.
    #[uniffi(default = 60000)]
    pub max_clock_offset_ms: u64,
}

impl SwarmConfig {
    fn into_builder(self) -> Result<crate::SwarmBuilder> {
        let config = |m: String| MurmurError::from(Error::Config(m));
        let mut b = crate::Swarm::builder()
            .storage_path(self.storage_path)
            .bootstrap(self.bootstrap)
            .local_discovery(self.local_discovery)
            .heartbeat_interval(Duration::from_millis(self.heartbeat_interval_ms))
            .leader_timeout(Duration::from_millis(self.leader_timeout_ms))
            .max_value_size(usize::try_from(self.max_value_size).unwrap_or(usize::MAX))
            .max_peers(self.max_peers as usize)
            .max_clock_offset(Duration::from_millis(self.max_clock_offset_ms));
        b = match (self.swarm_key, self.swarm_name) {
            (Some(_), Some(_)) => {
                return Err(config("set swarm_key or swarm_name, not both".into()))
            }
            (Some(key), None) => {
                let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
                    config(format!(
                        "swarm_key must be exactly 32 bytes, not {}",
                        key.len()
                    ))
                })?;
                b.swarm_key(key)
            }
            (None, Some(name)) => b.swarm_name(&name),
            (None, None) => b.swarm_name(DEFAULT_SWARM_NAME),
        };
        if let Some(addr) = self.bind_addr {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| config(format!("bind_addr {addr:?}: {e}")))?;
            b = b.bind_addr(addr);
        }
        if let Some(mode) = self.relay_mode {
            b = b.relay_mode(match mode {
                RelayMode::Default => crate::RelayMode::Default,
                RelayMode::Disabled => crate::RelayMode::Disabled,
                RelayMode::Custom { url } => crate::RelayMode::Custom(url),
            });
        }
        if let Some(d) = self.durability {
            b = b.durability(match d {
                Durability::Full => crate::Durability::Full,
                Durability::Process => crate::Durability::Process,
            });
        }
        Ok(b)
    }
}

/// The default configuration (the defaults of the Rust `SwarmBuilder`) for `storage_path`.
#[uniffi::export]
pub fn default_config(storage_path: String) -> SwarmConfig {
    SwarmConfig {
        storage_path,
        swarm_key: None,
        swarm_name: None,
        bootstrap: Vec::new(),
        bind_addr: None,
        relay_mode: None,
        local_discovery: true,
        heartbeat_interval_ms: 2000,
        leader_timeout_ms: 5000,
        durability: None,
        max_value_size: DEFAULT_MAX_VALUE_SIZE as u64,
        max_peers: 64,
        max_clock_offset_ms: crate::DEFAULT_MAX_CLOCK_OFFSET.as_millis() as u64,
    }
}

/// How the connection to a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PathKind {
    /// A direct UDP path.
    Direct,
    /// Through a relay server.
    Relayed,
    /// Not connected.
    None,
}

/// What `peers()` reports about one peer.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct PeerInfo {
    /// The peer's node ID.
    pub id: String,
    /// Whether an authenticated connection is open.
    pub connected: bool,
    /// How the connection runs.
    pub path: PathKind,
    /// Round-trip time of the connection's selected path, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// How far the peer's wall clock is ahead of this node's (negative: behind), in
    /// milliseconds; None until measured, and for a disconnected peer.
    pub clock_offset_ms: Option<i64>,
}

impl From<crate::PeerInfo> for PeerInfo {
    fn from(p: crate::PeerInfo) -> Self {
        PeerInfo {
            id: p.id,
            connected: p.connected,
            path: match p.path {
                crate::PathKind::Direct => PathKind::Direct,
                crate::PathKind::Relayed => PathKind::Relayed,
                crate::PathKind::None => PathKind::None,
            },
            rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
            clock_offset_ms: p.clock_offset_ms,
        }
    }
}

/// Something that happened to the map or to the swarm.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A key now holds a new value (written here or by a peer).
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
        /// The node that wrote it.
        origin: String,
    },
    /// A key was deleted (here or by a peer).
    Deleted {
        /// The key.
        key: String,
        /// The node that deleted it.
        origin: String,
    },
    /// The leader this node reports changed (`None`: an election is running).
    LeaderChanged {
        /// The new leader's node ID.
        leader: Option<String>,
        /// The leader's term, strictly increasing.
        term: u64,
    },
    /// An authenticated connection to a peer was established.
    PeerUp {
        /// The peer's node ID.
        peer: String,
    },
    /// The connection to a peer was lost.
    PeerDown {
        /// The peer's node ID.
        peer: String,
    },
    /// The listener fell behind and `missed` events were dropped for it.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
    /// This replica entered a new history epoch: its stored history was replaced by the live
    /// entries.
    Compacted {
        /// The epoch's sequence number.
        epoch: u64,
        /// The term of the leader that started it.
        term: u64,
        /// Live keys after the switch.
        keys: u64,
        /// Bytes of the stored document before.
        bytes_before: u64,
        /// Bytes of the stored document after.
        bytes_after: u64,
    },
    /// This replica could not store something (disk full, the database locked by another
    /// program, ...). It keeps working and retries by itself; reported once per run of
    /// failures, ended by `StorageRecovered`.
    StorageFailed {
        /// What failed, as the storage reported it.
        error: String,
    },
    /// A commit succeeded again after `StorageFailed`.
    StorageRecovered,
}

impl From<crate::Event> for Event {
    fn from(e: crate::Event) -> Self {
        match e {
            crate::Event::Put { key, value, origin } => Event::Put { key, value, origin },
            crate::Event::Deleted { key, origin } => Event::Deleted { key, origin },
            crate::Event::LeaderChanged { leader, term } => Event::LeaderChanged { leader, term },
            crate::Event::PeerUp { peer } => Event::PeerUp { peer },
            crate::Event::PeerDown { peer } => Event::PeerDown { peer },
            crate::Event::Lagged { missed } => Event::Lagged { missed },
            crate::Event::Compacted {
                epoch,
                term,
                keys,
                bytes_before,
                bytes_after,
            } => Event::Compacted {
                epoch,
                term,
                keys,
                bytes_before,
                bytes_after,
            },
            crate::Event::StorageFailed { error } => Event::StorageFailed { error },
            crate::Event::StorageRecovered => Event::StorageRecovered,
        }
    }
}

/// What an [`EventListener`] may raise. Any exception a listener raises arrives as `Failed`.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ListenerError {
    /// The listener failed.
    #[error("{reason}")]
    Failed {
        /// The exception, as text.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        ListenerError::Failed { reason: e.reason }
    }
}

/// Receives a swarm's events; implemented in the foreign language and passed to
/// `Swarm.subscribe`.
#[uniffi::export(foreign)]
pub trait EventListener: Send + Sync {
    /// Called once per event, in order, on a thread of the library's blocking pool. It may
    /// call the swarm (blocking methods included). An exception it raises is printed on
    /// stderr and delivery continues with the next event.
    fn on_event(&self, event: Event) -> Result<(), ListenerError>;
}

/// Listeners whose last owner went away on a library thread, waiting to be freed by a call from
/// the foreign side (see the module docs: a library thread never frees a foreign object).
static DEFERRED: Mutex<Vec<Arc<dyn EventListener>>> = Mutex::new(Vec::new());

/// Every subscription and swarm handed out and not yet gone, for [`prepare_exit`].
static LIVE_SUBS: Mutex<Vec<Weak<SubShared>>> = Mutex::new(Vec::new());
static LIVE_SWARMS: Mutex<Vec<Weak<Swarm>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frees `listener` here if this is a foreign thread, or parks it for the next foreign call.
fn release(listener: Arc<dyn EventListener>) {
    if crate::ffi::on_runtime_thread() {
        lock(&DEFERRED).push(listener);
    } else {
        drop(listener);
    }
}

/// Frees the parked listeners, when called on a foreign thread.
fn free_deferred() {
    if !crate::ffi::on_runtime_thread() {
        let parked = std::mem::take(&mut *lock(&DEFERRED));
        drop(parked);
    }
}

/// How long [`prepare_exit`] waits for a listener that is running, and for each swarm's
/// shutdown, before it lets the process go on exiting.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Makes the process ready to exit: no event delivery starts from now on, every subscription
/// is cancelled (a listener running on another thread is waited for, up to 5 seconds) and its
/// listener freed on the calling thread, and every swarm still open is shut down (up to 5
/// seconds each); afterwards their calls fail with `Closed`. Calling it again does nothing
/// more. This is final for the process: subscriptions made afterwards deliver nothing.
///
/// The Python package calls it from `atexit`, while the interpreter is still whole. The
/// library also stops deliveries by itself when the C `exit()` begins (C, C++, the JVM's
/// `System.exit` and normal JVM exit), so calling it by hand is only needed by a host that
/// tears down its own runtime before `exit()`.
#[uniffi::export]
pub fn prepare_exit() {
    crate::ffi::set_exiting();
    let subs = std::mem::take(&mut *lock(&LIVE_SUBS));
    for sub in subs.iter().filter_map(Weak::upgrade) {
        if let Some(listener) = sub.close(Some(EXIT_WAIT)) {
            release(listener);
        }
    }
    let swarms = std::mem::take(&mut *lock(&LIVE_SWARMS));
    for swarm in swarms.iter().filter_map(Weak::upgrade) {
        let core = swarm.core();
        let _ = block_on(async move {
            let _ = tokio::time::timeout(EXIT_WAIT, core.shutdown()).await;
        });
    }
    drop(subs);
    free_deferred();
}

/// Runs `fut` to completion on the library runtime, blocking the calling thread.
fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    let rt = crate::ffi::runtime()?;
    Ok(match tokio::runtime::Handle::try_current() {
        // On a thread of a multi-threaded runtime (a listener, or a foreign caller that
        // runs inside one): tell it this thread blocks.
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| rt.block_on(fut))
        }
        Ok(_) => {
            return Err(MurmurError::Internal(
                "blocking Murmur calls cannot run inside a single-threaded tokio runtime; use the async methods".into(),
            ))
        }
        Err(_) => rt.block_on(fut),
    })
}

/// Runs `fut` as a task of the library runtime and awaits its end: the foreign executor only
/// polls the task's handle.
async fn on_runtime<F, T>(fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    crate::ffi::runtime()?
        .spawn(fut)
        .await
        .map_err(|e| MurmurError::Internal(format!("a Murmur task failed: {e}")))?
}

/// One node of a swarm: a full replica of the shared key-value map.
#[derive(uniffi::Object)]
pub struct Swarm {
    /// Always `Some` except while dropping.
    core: Option<crate::Swarm>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // Dropping the last handle without shutdown() stops the node's tasks; that needs the
        // runtime's context, which a foreign finalizer thread does not have.
        if let Ok(rt) = crate::ffi::runtime() {
            let _guard = rt.enter();
            drop(self.core.take());
        }
    }
}

impl Swarm {
    fn core(&self) -> crate::Swarm {
        self.core.clone().expect("the swarm handle is alive")
    }

    /// The core swarm, or `Closed` after `shutdown()`: for the calls whose Rust counterparts
    /// cannot fail (`is_leader`, `peers`, ...), so that every call after shutdown raises.
    fn open_core(&self) -> Result<crate::Swarm> {
        let s = self.core();
        s.check_open()?;
        Ok(s)
    }

    async fn open(config: SwarmConfig) -> Result<Arc<Self>> {
        let builder = config.into_builder()?;
        let core = on_runtime(async move { Ok(builder.build().await?) }).await?;
        let swarm = Arc::new(Swarm { core: Some(core) });
        let mut live = lock(&LIVE_SWARMS);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&swarm));
        Ok(swarm)
    }
}

#[uniffi::export]
impl Swarm {
    /// Opens the data directory and binds the endpoint (blocking). Networking begins with
    /// `start()`.
    #[uniffi::constructor]
    pub fn new(config: SwarmConfig) -> Result<Arc<Self>> {
        block_on(Self::open(config))?
    }

    /// Opens the data directory and binds the endpoint, asynchronously.
    #[uniffi::constructor]
    pub async fn open_async(config: SwarmConfig) -> Result<Arc<Self>> {
        Self::open(config).await
    }

    /// Begins networking and leader election. Calling it again does nothing.
    pub fn start(&self) -> Result<()> {
        let s = self.core();
        block_on(async move { s.start().await })??;
        Ok(())
    }

    /// `start()`, asynchronously.
    pub async fn start_async(&self) -> Result<()> {
        let s = self.core();
        on_runtime(async move { Ok(s.start().await?) }).await
    }

    /// Sets `key` to `value`; returns once the write is durable locally.
    pub fn put(&self, key: String, value: Vec<u8>) -> Result<()> {
        let s = self.core();
        block_on(async move { s.put(&key, value).await })??;
        Ok(())
    }

    /// `put()`, asynchronously.
    pub async fn put_async(&self, key: String, value: Vec<u8>) -> Result<()> {
        let s = self.core();
        on_runtime(async move { Ok(s.put(&key, value).await?) }).await
    }

    /// The value of `key` in the local replica, or null/None/nil.
    pub fn get(&self, key: String) -> Result<Option<Vec<u8>>> {
        let s = self.core();
        Ok(block_on(async move { s.get(&key).await })??)
    }

    /// `get()`, asynchronously.
    pub async fn get_async(&self, key: String) -> Result<Option<Vec<u8>>> {
        let s = self.core();
        on_runtime(async move { Ok(s.get(&key).await?) }).await
    }

    /// Deletes `key` (deleting an absent key succeeds). Durable on return.
    pub fn delete(&self, key: String) -> Result<()> {
        let s = self.core();
        block_on(async move { s.delete(&key).await })??;
        Ok(())
    }

    /// `delete()`, asynchronously.
    pub async fn delete_async(&self, key: String) -> Result<()> {
        let s = self.core();
        on_runtime(async move { Ok(s.delete(&key).await?) }).await
    }

    /// Keys of the local replica that start with `prefix` (all keys for `""`), in byte order.
    pub fn keys(&self, prefix: String) -> Result<Vec<String>> {
        let s = self.core();
        Ok(block_on(async move { s.keys(&prefix).await })??)
    }

    /// `keys()`, asynchronously.
    pub async fn keys_async(&self, prefix: String) -> Result<Vec<String>> {
        let s = self.core();
        on_runtime(async move { Ok(s.keys(&prefix).await?) }).await
    }

    /// Number of keys in the local replica.
    pub fn len(&self) -> Result<u64> {
        let s = self.core();
        Ok(block_on(async move { s.len().await })?? as u64)
    }

    /// Whether the local replica holds no key.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Whether this node is the leader. Fails with `Closed` after `shutdown()`.
    pub fn is_leader(&self) -> Result<bool> {
        let s = self.open_core()?;
        block_on(async move { s.is_leader().await })
    }

    /// The leader's node ID, if one is known. Fails with `Closed` after `shutdown()`.
    pub fn leader_id(&self) -> Result<Option<String>> {
        let s = self.open_core()?;
        block_on(async move { s.leader_id().await })
    }

    /// The current leader's term (0 before any leader is known). Fails with `Closed` after
    /// `shutdown()`.
    pub fn leader_term(&self) -> Result<u64> {
        let s = self.open_core()?;
        block_on(async move { s.leader_term().await })
    }

    /// This node's ID (stable across restarts from the same data directory). It cannot fail:
    /// after `shutdown()` it still returns the same ID (the node's identity, kept in its data
    /// directory), the one call that does not raise `Closed`.
    pub fn node_id(&self) -> String {
        self.core().node_id()
    }

    /// What another node passes in `SwarmConfig.bootstrap` to join through this one. Fails
    /// with `Closed` after `shutdown()` (the node has no addresses any more).
    pub fn ticket(&self) -> Result<String> {
        Ok(self.open_core()?.ticket())
    }

    /// The peers this node knows. Fails with `Closed` after `shutdown()`.
    pub fn peers(&self) -> Result<Vec<PeerInfo>> {
        let s = self.open_core()?;
        let peers = block_on(async move { s.peers().await })?;
        Ok(peers.into_iter().map(Into::into).collect())
    }

    /// Folds the stored change history into a snapshot now.
    pub fn compact(&self) -> Result<()> {
        let s = self.core();
        block_on(async move { s.compact().await })??;
        Ok(())
    }

    /// Stops gracefully and releases the data directory. Every call afterwards fails with
    /// `Closed` (except `node_id()`); subscriptions end.
    pub fn shutdown(&self) -> Result<()> {
        let s = self.core();
        block_on(async move { s.shutdown().await })??;
        free_deferred();
        Ok(())
    }

    /// `shutdown()`, asynchronously.
    pub async fn shutdown_async(&self) -> Result<()> {
        let s = self.core();
        on_runtime(async move { Ok(s.shutdown().await?) }).await
    }

    /// Delivers every event from now on to `listener` until `Subscription.cancel()` is called
    /// or the swarm shuts down. Fails with `Closed` after `shutdown()`.
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Result<Arc<Subscription>> {
        free_deferred();
        let rt = crate::ffi::runtime()?;
        let mut stream = self.open_core()?.subscribe();
        let shared = Arc::new(SubShared {
            cancelled: AtomicBool::new(false),
            listener: Mutex::new(Some(listener)),
            deliverer: Mutex::new(None),
        });
        {
            let mut live = lock(&LIVE_SUBS);
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&shared));
        }
        let task_shared = shared.clone();
        let task = rt.spawn(async move {
            while let Some(event) = stream.recv().await {
                if task_shared.stopped() {
                    break;
                }
                let sh = task_shared.clone();
                let delivered = tokio::task::spawn_blocking(move || sh.deliver(event)).await;
                if let Err(e) = delivered {
                    tracing::warn!("an event listener failed: {e}");
                }
            }
        });
        Ok(Arc::new(Subscription {
            shared,
            task: task.abort_handle(),
        }))
    }
}

/// What a subscription's delivery task and its handle share. It owns the foreign listener (the
/// task never does), so that the listener is freed on a foreign thread (see the module docs).
struct SubShared {
    cancelled: AtomicBool,
    /// The listener, until the subscription is cancelled. Locked while the listener runs, so
    /// that `cancel` can wait for a delivery in progress.
    listener: Mutex<Option<Arc<dyn EventListener>>>,
    /// The thread running the listener, if one is.
    deliverer: Mutex<Option<ThreadId>>,
}

impl SubShared {
    /// Whether no delivery may start: cancelled, or the process is exiting.
    fn stopped(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) || crate::ffi::exiting()
    }

    fn deliver(&self, event: crate::Event) {
        let mut slot = lock(&self.listener);
        if self.stopped() {
            return;
        }
        let Some(listener) = slot.as_ref() else {
            return;
        };
        *lock(&self.deliverer) = Some(std::thread::current().id());
        struct Clear<'a>(&'a Mutex<Option<ThreadId>>);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                *lock(self.0) = None;
            }
        }
        let clear = Clear(&self.deliverer);
        if let Err(e) = listener.on_event(event.into()) {
            // Like an uncaught exception in a thread: say so, and carry on.
            eprintln!("murmur: an event listener raised an exception (delivery continues): {e}");
            tracing::warn!("an event listener raised an exception: {e}");
        }
        drop(clear);
        if self.cancelled.load(Ordering::SeqCst) {
            // Cancelled from inside the listener: `cancel` could not take it.
            if let Some(l) = slot.take() {
                release(l);
            }
        }
    }

    /// Stops delivery for good and takes the listener out. A delivery in progress on another
    /// thread is waited for (up to `wait`, or without limit); called from the listener itself,
    /// it returns `None` at once and the delivery frees the listener when the callback returns.
    fn close(&self, wait: Option<Duration>) -> Option<Arc<dyn EventListener>> {
        self.cancelled.store(true, Ordering::SeqCst);
        if *lock(&self.deliverer) == Some(std::thread::current().id()) {
            return None;
        }
        let mut slot = match wait {
            None => lock(&self.listener),
            Some(limit) => {
                let deadline = Instant::now() + limit;
                loop {
                    match self.listener.try_lock() {
                        Ok(g) => break g,
                        Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                        Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Err(std::sync::TryLockError::WouldBlock) => {
                            eprintln!(
                                "murmur: an event listener still running at exit was not waited for"
                            );
                            return None;
                        }
                    }
                }
            }
        };
        slot.take()
    }
}

impl Drop for SubShared {
    fn drop(&mut self) {
        let listener = self
            .listener
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(l) = listener {
            release(l);
        }
    }
}

/// An event subscription; events flow until `cancel()` or the swarm's shutdown.
#[derive(uniffi::Object)]
pub struct Subscription {
    shared: Arc<SubShared>,
    task: tokio::task::AbortHandle,
}

#[uniffi::export]
impl Subscription {
    /// Stops the delivery. When it returns, the listener is not running (unless `cancel` is
    /// called from the listener itself) and will not be called again, and the library holds no
    /// reference to it any more. Calling it again, or after the swarm's shutdown, does nothing.
    pub fn cancel(&self) {
        self.task.abort();
        if let Some(listener) = self.shared.close(None) {
            release(listener);
        }
        free_deferred();
    }

    /// Whether `cancel()` was called.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config(dir: &std::path::Path) -> SwarmConfig {
        SwarmConfig {
            bind_addr: Some("127.0.0.1:0".into()),
            relay_mode: Some(RelayMode::Disabled),
            local_discovery: false,
            heartbeat_interval_ms: 100,
            leader_timeout_ms: 500,
            ..default_config(dir.display().to_string())
        }
    }

    /// A foreign executor (here futures-lite's, which is not tokio) only polls a join handle:
    /// the work itself runs on a thread of the library runtime.
    #[test]
    fn async_work_runs_on_the_library_runtime() {
        let name = futures_lite::future::block_on(on_runtime(async {
            Ok(std::thread::current().name().map(str::to_string))
        }))
        .unwrap();
        assert_eq!(name.as_deref(), Some("murmur-rt"));
    }

    #[test]
    fn async_methods_work_without_a_tokio_context() {
        let dir = tempfile::tempdir().unwrap();
        futures_lite::future::block_on(async {
            let s = Swarm::open_async(test_config(dir.path())).await.unwrap();
            s.start_async().await.unwrap();
            s.put_async("k".into(), b"v".to_vec()).await.unwrap();
            assert_eq!(s.get_async("k".into()).await.unwrap(), Some(b"v".to_vec()));
            s.delete_async("k".into()).await.unwrap();
            assert_eq!(
                s.keys_async(String::new()).await.unwrap(),
                Vec::<String>::new()
            );
            s.shutdown_async().await.unwrap();
            assert!(matches!(
                s.get_async("k".into()).await,
                Err(MurmurError::Closed(_))
            ));
        });
    }

    /// Records where it is dropped: a library thread must never free a foreign listener.
    struct Probe {
        events: Arc<Mutex<Vec<Event>>>,
        dropped_on_runtime_thread: Arc<Mutex<Option<bool>>>,
    }

    impl EventListener for Probe {
        fn on_event(&self, event: Event) -> Result<(), ListenerError> {
            lock(&self.events).push(event);
            Ok(())
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            *lock(&self.dropped_on_runtime_thread) = Some(crate::ffi::on_runtime_thread());
        }
    }

    type Dropped = Arc<Mutex<Option<bool>>>;

    fn probe() -> (Arc<dyn EventListener>, Arc<Mutex<Vec<Event>>>, Dropped) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(Mutex::new(None));
        let p = Probe {
            events: events.clone(),
            dropped_on_runtime_thread: dropped.clone(),
        };
        (Arc::new(p), events, dropped)
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The listener is freed on the thread that cancels, also after the swarm's shutdown; when
    /// the subscription handle is dropped instead and the delivery task ends on a library
    /// thread, the listener is parked and freed by the next call from a foreign thread. Never on a library thread: at interpreter exit
    /// that aborted the Python process.
    #[test]
    fn listeners_are_never_freed_on_a_library_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = Swarm::new(test_config(&dir.path().join("a"))).unwrap();
        s.start().unwrap();
        let (l1, events1, dropped1) = probe();
        let (l2, events2, dropped2) = probe();
        let sub1 = s.subscribe(l1).unwrap();
        let sub2 = s.subscribe(l2).unwrap();
        s.put("k".into(), b"v".to_vec()).unwrap();
        wait_for("both listeners see the put", || {
            !lock(&events1).is_empty() && !lock(&events2).is_empty()
        });
        drop(sub2);
        s.shutdown().unwrap();
        // The delivery tasks end with the shutdown; the listeners are still alive.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*lock(&dropped1), None, "listener 1 freed before cancel");
        sub1.cancel();
        assert_eq!(
            *lock(&dropped1),
            Some(false),
            "listener 1 freed on the cancelling thread"
        );
        // Dropping the last handle ends the event stream, so the task of subscription 2 (whose
        // handle is gone) ends on a library thread, its last owner: the listener waits there
        // for the next foreign call.
        drop(s);
        let other = Swarm::new(test_config(&dir.path().join("b"))).unwrap();
        wait_for("listener 2 parked or freed", || {
            lock(&dropped2).is_some() || !lock(&DEFERRED).is_empty()
        });
        let (l3, _, _) = probe();
        other.subscribe(l3).unwrap().cancel();
        assert_eq!(
            *lock(&dropped2),
            Some(false),
            "listener 2 freed on a foreign thread"
        );
        other.shutdown().unwrap();
    }

    /// After shutdown every method fails with Closed, except node_id (which cannot fail).
    #[test]
    fn every_call_after_shutdown_fails_with_closed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Swarm::new(test_config(dir.path())).unwrap();
        s.start().unwrap();
        let id = s.node_id();
        s.shutdown().unwrap();
        let closed = |r: Result<()>| assert!(matches!(r, Err(MurmurError::Closed(_))), "{r:?}");
        closed(s.start());
        closed(s.put("k".into(), b"v".to_vec()));
        closed(s.get("k".into()).map(drop));
        closed(s.delete("k".into()));
        closed(s.keys(String::new()).map(drop));
        closed(s.len().map(drop));
        closed(s.is_empty().map(drop));
        closed(s.is_leader().map(drop));
        closed(s.leader_id().map(drop));
        closed(s.leader_term().map(drop));
        closed(s.ticket().map(drop));
        closed(s.peers().map(drop));
        closed(s.compact());
        closed(s.subscribe(probe().0).map(drop));
        closed(s.shutdown());
        futures_lite::future::block_on(async {
            closed(s.start_async().await);
            closed(s.put_async("k".into(), b"v".to_vec()).await);
            closed(s.get_async("k".into()).await.map(drop));
            closed(s.delete_async("k".into()).await);
            closed(s.keys_async(String::new()).await.map(drop));
            closed(s.shutdown_async().await);
        });
        assert_eq!(s.node_id(), id);
    }

    #[test]
    fn config_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        cfg.swarm_key = Some(vec![0; 31]);
        assert!(matches!(Swarm::new(cfg), Err(MurmurError::Config(m)) if m.contains("32 bytes")));
        let mut cfg = test_config(dir.path());
        cfg.swarm_key = Some(vec![0; 32]);
        cfg.swarm_name = Some("x".into());
        assert!(matches!(Swarm::new(cfg), Err(MurmurError::Config(_))));
        let mut cfg = test_config(dir.path());
        cfg.bind_addr = Some("nowhere".into());
        assert!(matches!(Swarm::new(cfg), Err(MurmurError::Config(m)) if m.contains("bind_addr")));
    }
}
