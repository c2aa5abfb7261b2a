//! [`Swarm`] and [`SwarmBuilder`]: the public API.
//!
//! A `Swarm` is a cheap handle (clone it freely) on one node: its replica thread (storage and
//! document), its iroh endpoint and its node task (connections, election). Reads are served
//! locally from the read view; writes go to the replica thread and return once durable.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{Endpoint, EndpointAddr};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    clock::{Clocks, DEFAULT_MAX_CLOCK_OFFSET},
    doc::NodeBytes,
    error::{Error, Result},
    events::{Event, EventStream},
    net::{self, auth::SwarmKey, ticket, NetConfig, NetHandle, NodeEvent, PeerInfo},
    replica::{self, Command, ReadView, ReplicaConfig, WriteOp},
    store::Durability,
};

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;
/// Default largest value, in bytes (see [`SwarmBuilder::max_value_size`]).
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;
/// The highest value size limit that can be configured (a value travels in one frame).
pub const MAX_VALUE_SIZE_LIMIT: usize = 8 << 20;
/// The swarm name used when neither a key nor a name is given: zero-configuration nodes on one
/// LAN find each other.
pub const DEFAULT_SWARM_NAME: &str = "murmur-default-swarm";

/// Which relay servers help peers behind NATs reach each other.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// iroh's public relay servers (the default).
    #[default]
    Default,
    /// No relays: only direct connections.
    Disabled,
    /// Your own relay server, by URL (for example `https://relay.example.com`).
    Custom(String),
}

impl RelayMode {
    pub(crate) fn to_iroh(&self) -> Result<iroh::RelayMode> {
        Ok(match self {
            RelayMode::Default => iroh::RelayMode::Default,
            RelayMode::Disabled => iroh::RelayMode::Disabled,
            RelayMode::Custom(url) => {
                let url: iroh::RelayUrl = url
                    .parse()
                    .map_err(|e| Error::Config(format!("relay URL {url:?}: {e}")))?;
                iroh::RelayMode::Custom(iroh::RelayMap::from(url))
            }
        })
    }
}

/// Configures and opens a [`Swarm`].
///
/// ```no_run
/// # async fn run() -> murmur::Result<()> {
/// use std::time::Duration;
/// let swarm = murmur::Swarm::builder()
///     .storage_path("./data")
///     .swarm_name("my-team")
///     .heartbeat_interval(Duration::from_millis(500))
///     .leader_timeout(Duration::from_secs(2))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SwarmBuilder {
    storage_path: PathBuf,
    swarm_key: Option<SwarmKey>,
    bootstrap: Vec<String>,
    bind_addr: Option<SocketAddr>,
    relay_mode: RelayMode,
    local_discovery: bool,
    heartbeat_interval: Duration,
    leader_timeout: Duration,
    durability: Durability,
    compaction: crate::CompactionPolicy,
    max_value_size: usize,
    max_peers: usize,
    max_clock_offset: Duration,
    clock_skew_ms: i64,
}

impl Default for SwarmBuilder {
    fn default() -> Self {
        SwarmBuilder {
            storage_path: PathBuf::from("./murmur_data"),
            swarm_key: None,
            bootstrap: Vec::new(),
            bind_addr: None,
            relay_mode: RelayMode::Default,
            local_discovery: true,
            heartbeat_interval: Duration::from_secs(2),
            leader_timeout: Duration::from_secs(5),
            durability: Durability::Full,
            compaction: crate::CompactionPolicy::default(),
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            max_peers: 64,
            max_clock_offset: DEFAULT_MAX_CLOCK_OFFSET,
            clock_skew_ms: 0,
        }
    }
}

impl SwarmBuilder {
    /// The data directory (created if missing). Default `./murmur_data`.
    pub fn storage_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.storage_path = path.into();
        self
    }

    /// The 32-byte secret shared by the members of the swarm. Peers that cannot prove they hold
    /// it are refused before any data flows.
    pub fn swarm_key(mut self, key: [u8; 32]) -> Self {
        self.swarm_key = Some(SwarmKey::from_bytes(key));
        self
    }

    /// Derives the swarm key from a name: an open swarm that anyone knowing the name can join.
    pub fn swarm_name(mut self, name: &str) -> Self {
        self.swarm_key = Some(SwarmKey::from_name(name));
        self
    }

    /// Peers to join through: tickets from [`Swarm::ticket`], `<node-id>@<ip>:<port>`, or
    /// bare node IDs (reachable through local discovery). Adds to earlier calls.
    pub fn bootstrap<I, S>(mut self, peers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.bootstrap.extend(peers.into_iter().map(Into::into));
        self
    }

    /// The local UDP socket address. Default: all interfaces, a random port (IPv4 and IPv6).
    pub fn bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind_addr = Some(addr);
        self
    }

    /// Relay servers to use. Default: iroh's public relays.
    pub fn relay_mode(mut self, mode: RelayMode) -> Self {
        self.relay_mode = mode;
        self
    }

    /// Finds peers of the same swarm on the LAN with mDNS. Default on.
    pub fn local_discovery(mut self, on: bool) -> Self {
        self.local_discovery = on;
        self
    }

    /// How often the leader sends heartbeats. Default 2 s.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// How long without a heartbeat before the leader is presumed gone. Default 5 s; must be
    /// greater than the heartbeat interval.
    pub fn leader_timeout(mut self, d: Duration) -> Self {
        self.leader_timeout = d;
        self
    }

    /// What a returned write survives. Default [`Durability::Full`].
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// When history is compacted across the swarm (see [`crate::history`]): by default the
    /// leader starts a new epoch once the stored history outweighs 4× the live data and
    /// 64 KiB, at most every 5 s, and deletions are remembered for 30 days. `ratio`,
    /// `min_bytes` and `min_interval` must not be zero ([`build`](Self::build) fails with
    /// [`Error::Config`]).
    /// [`CompactionPolicy::manual`](crate::CompactionPolicy::manual) leaves it to
    /// [`Swarm::compact`].
    pub fn compaction(mut self, policy: crate::CompactionPolicy) -> Self {
        self.compaction = policy;
        self
    }

    /// Largest value accepted by this node's `put`, in bytes. Default 1 MiB, at most 8 MiB.
    /// Values received from peers are not held to it (a replica must store what its swarm
    /// wrote, or it would diverge): they are bounded by the protocol's data frame (16 MiB).
    /// Give every member of a swarm the same limit.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Most peers connected at once (the full mesh is bounded by this). Default 64.
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n;
        self
    }

    /// The largest difference between this node's wall clock and the median of its connected
    /// peers' clocks (its own counted) at which it still accepts local writes; beyond it
    /// `put` and `delete` fail with [`Error::ClockSkew`]. Default 60 s
    /// ([`DEFAULT_MAX_CLOCK_OFFSET`](crate::DEFAULT_MAX_CLOCK_OFFSET)): NTP keeps computers and phones within milliseconds of
    /// each other, and a clock a minute off is misconfigured, while a tighter bound would
    /// refuse writes on a device whose clock merely drifted while offline. Concurrent writes
    /// are ordered by time only as finely as this bound (README, "Clocks"). Must be at least
    /// 1 ms.
    pub fn max_clock_offset(mut self, d: Duration) -> Self {
        self.max_clock_offset = d;
        self
    }

    /// Test hook: runs this node's wall clock `ms` milliseconds ahead of the system clock
    /// (behind if negative), as a node with a wrong clock would. Not for production use.
    #[doc(hidden)]
    pub fn test_clock_skew_ms(mut self, ms: i64) -> Self {
        self.clock_skew_ms = ms;
        self
    }

    /// Opens the data directory and binds the endpoint. Networking starts with
    /// [`Swarm::start`].
    pub async fn build(self) -> Result<Swarm> {
        if self.heartbeat_interval.is_zero() || self.leader_timeout <= self.heartbeat_interval {
            return Err(Error::Config(format!(
                "leader_timeout ({:?}) must be greater than heartbeat_interval ({:?}), which must not be zero",
                self.leader_timeout, self.heartbeat_interval
            )));
        }
        if self.max_value_size == 0 || self.max_value_size > MAX_VALUE_SIZE_LIMIT {
            return Err(Error::Config(format!(
                "max_value_size must be between 1 and {MAX_VALUE_SIZE_LIMIT} bytes, not {}",
                self.max_value_size
            )));
        }
        if self.max_peers == 0 {
            return Err(Error::Config("max_peers must be at least 1".into()));
        }
        check_policy(&self.compaction)?;
        if self.max_clock_offset < Duration::from_millis(1) {
            return Err(Error::Config(
                "max_clock_offset must be at least 1 ms".into(),
            ));
        }
        let clocks = Arc::new(Clocks::new(self.max_clock_offset, self.clock_skew_ms));
        let bootstrap = self
            .bootstrap
            .iter()
            .map(|s| ticket::parse(s))
            .collect::<Result<Vec<_>>>()?;
        self.relay_mode.to_iroh()?;

        let (events, _) = broadcast::channel(4096);
        let (misbehaved_tx, misbehaved_rx) = mpsc::unbounded_channel();
        let cfg = ReplicaConfig {
            dir: self.storage_path.clone(),
            durability: self.durability,
            events: events.clone(),
            misbehaved: misbehaved_tx,
            policy: self.compaction,
            clocks: clocks.clone(),
        };
        let opened = tokio::task::spawn_blocking(move || replica::spawn(cfg))
            .await
            .map_err(|e| Error::Storage(format!("opening the store panicked: {e}")))??;
        let known: Vec<EndpointAddr> = opened
            .peer_addrs
            .iter()
            .filter_map(|(_, a)| postcard::from_bytes(a).ok())
            .collect();
        let net_cfg = NetConfig {
            swarm_key: self
                .swarm_key
                .clone()
                .unwrap_or_else(|| SwarmKey::from_name(DEFAULT_SWARM_NAME)),
            bind_addr: self.bind_addr,
            relay_mode: self.relay_mode.clone(),
            local_discovery: self.local_discovery,
            heartbeat_interval: self.heartbeat_interval,
            leader_timeout: self.leader_timeout,
            max_peers: self.max_peers,
            bootstrap,
        };
        let endpoint = match net::bind_endpoint(opened.secret_key, &net_cfg).await {
            Ok(ep) => ep,
            Err(e) => {
                stop_replica(&opened.tx).await;
                let _ = tokio::task::spawn_blocking(move || opened.thread.join()).await;
                return Err(e);
            }
        };
        let me: NodeBytes = *endpoint.id().as_bytes();
        Ok(Swarm {
            inner: Arc::new(Inner {
                me,
                node_id: endpoint.id().to_string(),
                endpoint,
                replica_tx: opened.tx,
                view: opened.view,
                events,
                max_value_size: self.max_value_size,
                clocks,
                state: Mutex::new(State::Built(Box::new(Pending {
                    cfg: net_cfg,
                    record: net::ElectionRecord {
                        term: opened.term,
                        leader: opened
                            .term_leader
                            .as_deref()
                            .and_then(net::ElectionRecord::decode_leader),
                    },
                    known,
                    misbehaved: misbehaved_rx,
                }))),
                thread: Mutex::new(Some(opened.thread)),
            }),
        })
    }
}

async fn stop_replica(tx: &mpsc::Sender<Command>) {
    let (reply, done) = oneshot::channel();
    if tx.send(Command::Shutdown { reply }).await.is_ok() {
        let _ = done.await;
    }
}

/// What `start` needs, kept from `build`.
struct Pending {
    cfg: NetConfig,
    record: net::ElectionRecord,
    known: Vec<EndpointAddr>,
    misbehaved: mpsc::UnboundedReceiver<(NodeBytes, String)>,
}

enum State {
    Built(Box<Pending>),
    Running(NetHandle),
    Closed,
}

struct Inner {
    me: NodeBytes,
    node_id: String,
    endpoint: Endpoint,
    replica_tx: mpsc::Sender<Command>,
    view: Arc<ReadView>,
    events: broadcast::Sender<Event>,
    max_value_size: usize,
    clocks: Arc<Clocks>,
    state: Mutex<State>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without shutdown(): stop the tasks; the replica thread stops when its queue
        // closes (it persists sync state on the way out).
        let state = std::mem::replace(
            self.state.get_mut().unwrap_or_else(|p| p.into_inner()),
            State::Closed,
        );
        if let State::Running(net) = state {
            let (tx, _rx) = oneshot::channel();
            let _ = net.node_tx.try_send(NodeEvent::Shutdown(tx));
        } else if !matches!(state, State::Closed) {
            let ep = self.endpoint.clone();
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { ep.close().await });
            }
        }
    }
}

/// One node of a swarm: a full replica of the shared key-value map.
///
/// ```no_run
/// # async fn run() -> murmur::Result<()> {
/// use murmur::Swarm;
/// let swarm = Swarm::builder().storage_path("./data").build().await?;
/// swarm.start().await?;                       // begins networking and election
/// swarm.put("user:123", b"Alice").await?;
/// assert_eq!(swarm.get("user:123").await?, Some(b"Alice".to_vec()));
/// swarm.delete("user:123").await?;
/// println!("leader: {:?}, me: {}", swarm.leader_id().await, swarm.node_id());
/// swarm.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Swarm {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

/// Refuses compaction thresholds of zero: with any of them zero the leader would cut an epoch
/// at every opportunity (about one a second while idle), automatic compaction or not (the
/// policy can be switched on later, and a zero is always a mistake).
pub(crate) fn check_policy(policy: &crate::CompactionPolicy) -> Result<()> {
    let zero = if policy.ratio == 0 {
        "ratio"
    } else if policy.min_bytes == 0 {
        "min_bytes"
    } else if policy.min_interval.is_zero() {
        "min_interval"
    } else {
        return Ok(());
    };
    Err(Error::Config(format!(
        "the compaction policy's {zero} must be greater than zero (defaults: ratio 4, min_bytes 64 KiB, min_interval 5 s)"
    )))
}

/// Checks a key against the rules of DESIGN.md §3.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "the key is empty".to_string()
    } else if key.len() > MAX_KEY_LEN {
        format!("the key is {} bytes long", key.len())
    } else if key.contains('\0') {
        "the key contains a NUL character".to_string()
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey { reason })
}

impl Swarm {
    /// A builder with the defaults of DESIGN.md §2.
    pub fn builder() -> SwarmBuilder {
        SwarmBuilder::default()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        match &*self.lock_state() {
            State::Closed => Err(Error::Closed),
            _ => Ok(()),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins networking and leader election: accepts connections, dials the bootstrap peers
    /// and the peers remembered from earlier runs. Calling it again does nothing.
    pub async fn start(&self) -> Result<()> {
        let mut state = self.lock_state();
        let pending = match std::mem::replace(&mut *state, State::Closed) {
            State::Built(p) => p,
            State::Running(net) => {
                *state = State::Running(net);
                return Ok(());
            }
            State::Closed => return Err(Error::Closed),
        };
        let Pending {
            cfg,
            record,
            known,
            misbehaved,
        } = *pending;
        let net = net::start(
            self.inner.endpoint.clone(),
            cfg,
            record,
            known,
            self.inner.replica_tx.clone(),
            misbehaved,
            self.inner.events.clone(),
            self.inner.clocks.clone(),
        );
        *state = State::Running(net);
        Ok(())
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<()> {
        self.check_open()?;
        // A node whose clock is far off its peers' would stamp writes out of order.
        self.inner.clocks.check_write()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .replica_tx
            .send(Command::Write { ops, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Sets `key` to `value`. Returns once the write is durable locally (see
    /// [`SwarmBuilder::durability`]); it reaches connected peers at once and others when they
    /// reconnect.
    pub async fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        check_key(key)?;
        let value = value.as_ref();
        if value.len() > self.inner.max_value_size {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                max: self.inner.max_value_size,
            });
        }
        self.write(vec![WriteOp::Put {
            key: key.to_string(),
            value: value.to_vec(),
        }])
        .await
    }

    /// How many commits the replica failed since it opened (see `ReadView::failed_commits`).
    #[cfg(test)]
    pub(crate) fn failed_commits(&self) -> u64 {
        self.inner.view.failed_commits()
    }

    /// Most bytes of values the replica ever queued for one peer.
    #[cfg(test)]
    pub(crate) fn max_queued_values(&self) -> usize {
        self.inner.view.max_queued_values()
    }

    /// The value of `key` in the local replica.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.check_open()?;
        self.inner.view.get(key)
    }

    /// Deletes `key` (deleting an absent key succeeds and changes nothing). Durable on return.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.write(vec![WriteOp::Delete {
            key: key.to_string(),
        }])
        .await
    }

    /// Keys of the local replica that start with `prefix` (all keys for `""`), in byte order.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.check_open()?;
        Ok(self.inner.view.keys(prefix))
    }

    /// Number of keys in the local replica.
    pub async fn len(&self) -> Result<usize> {
        self.check_open()?;
        Ok(self.inner.view.len())
    }

    /// Whether the local replica holds no key.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    fn leader_state(&self) -> net::LeaderState {
        match &*self.lock_state() {
            State::Running(net) => net.leader.borrow().clone(),
            _ => net::LeaderState::default(),
        }
    }

    /// Whether this node is the leader (`false` after [`shutdown`](Self::shutdown): this
    /// signature cannot fail; the foreign bindings raise `Closed` instead).
    pub async fn is_leader(&self) -> bool {
        self.leader_state().is_me
    }

    /// The leader's node ID, if one is known (`None` after [`shutdown`](Self::shutdown)).
    pub async fn leader_id(&self) -> Option<String> {
        self.leader_state()
            .leader
            .map(|l| crate::ids::node_id_string(&l))
    }

    /// The current leader's term (0 before any leader is known): strictly increasing across
    /// leader changes, persisted, usable as a fencing token. 0 after
    /// [`shutdown`](Self::shutdown).
    pub async fn leader_term(&self) -> u64 {
        self.leader_state().term
    }

    /// This node's ID: its iroh endpoint ID (an ed25519 public key, hex). Stable across
    /// restarts from the same data directory.
    pub fn node_id(&self) -> String {
        self.inner.node_id.clone()
    }

    /// What another node passes to [`SwarmBuilder::bootstrap`] to join through this one: the
    /// node ID and its current addresses.
    pub fn ticket(&self) -> String {
        ticket::encode(&self.inner.endpoint.addr())
    }

    /// This node's current addresses, as text: `ip:port` for each direct address and the URL of
    /// its home relay once connected to it. (The same information as the ticket, readable.)
    pub fn addrs(&self) -> Vec<String> {
        self.inner
            .endpoint
            .addr()
            .addrs
            .iter()
            .filter_map(|a| match a {
                iroh::TransportAddr::Ip(s) => Some(s.to_string()),
                iroh::TransportAddr::Relay(u) => Some(u.to_string()),
                _ => None,
            })
            .collect()
    }

    /// The peers this node knows: connected or not, direct or relayed, round-trip time. Empty
    /// after [`shutdown`](Self::shutdown).
    pub async fn peers(&self) -> Vec<PeerInfo> {
        let tx = match &*self.lock_state() {
            State::Running(net) => net.node_tx.clone(),
            _ => return Vec::new(),
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(NodeEvent::Peers(reply)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Subscribes to events: every put and delete (local or remote, with its origin), leader
    /// changes, peers coming and going.
    pub fn subscribe(&self) -> EventStream {
        EventStream::new(self.inner.events.subscribe())
    }

    /// Compacts history now. Locally, folds the stored changes into a snapshot and drops
    /// values no longer referenced. Across the swarm, starts a new history epoch (see
    /// [`crate::history`]): at once if this node leads, otherwise by asking the leader. Every
    /// replica reports the switch with [`Event::Compacted`](crate::Event::Compacted). Both also
    /// happen automatically by the builder's [`compaction`](SwarmBuilder::compaction) policy.
    pub async fn compact(&self) -> Result<()> {
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .replica_tx
            .send(Command::Compact { reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The history epoch this replica's document is in (see [`crate::history`]).
    pub fn epoch(&self) -> crate::EpochId {
        self.inner.view.epoch()
    }

    /// Stops gracefully: closes connections (peers see this node leave at once), persists
    /// per-peer sync state, closes the database and releases the data directory. Every call
    /// afterwards, on any clone of this handle, fails with [`Error::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        let prev = std::mem::replace(&mut *self.lock_state(), State::Closed);
        match prev {
            State::Closed => return Err(Error::Closed),
            State::Running(net) => {
                let (tx, rx) = oneshot::channel();
                if net.node_tx.send(NodeEvent::Shutdown(tx)).await.is_ok() {
                    let _ = rx.await;
                }
                let _ = net.task.await;
            }
            State::Built(_) => self.inner.endpoint.close().await,
        }
        stop_replica(&self.inner.replica_tx).await;
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(())
    }

    /// The raw node ID bytes (crate-internal).
    #[allow(dead_code)]
    pub(crate) fn node_bytes(&self) -> NodeBytes {
        self.inner.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero compaction thresholds cut an epoch about once a second while idle: refused.
    #[tokio::test]
    async fn zero_compaction_thresholds_are_refused() {
        let zero_ratio = crate::CompactionPolicy {
            ratio: 0,
            ..Default::default()
        };
        let zero_bytes = crate::CompactionPolicy {
            min_bytes: 0,
            ..Default::default()
        };
        let zero_interval = crate::CompactionPolicy {
            min_interval: Duration::ZERO,
            ..crate::CompactionPolicy::manual()
        };
        for (policy, field) in [
            (zero_ratio, "ratio"),
            (zero_bytes, "min_bytes"),
            (zero_interval, "min_interval"),
        ] {
            let d = tempfile::tempdir().unwrap();
            let r = Swarm::builder()
                .storage_path(d.path())
                .compaction(policy)
                .local_discovery(false)
                .relay_mode(RelayMode::Disabled)
                .build()
                .await;
            match r {
                Err(Error::Config(msg)) => assert!(msg.contains(field), "{msg}"),
                other => panic!("{field} 0: expected a Config error, got {other:?}"),
            }
            assert_eq!(
                std::fs::read_dir(d.path()).unwrap().count(),
                0,
                "refused before the store was opened"
            );
        }
        assert!(check_policy(&crate::CompactionPolicy::default()).is_ok());
        assert!(check_policy(&crate::CompactionPolicy::manual()).is_ok());
    }
}
