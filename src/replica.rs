//! The replica: one writer thread that owns the SQLite connection and the automerge document.
//!
//! Everything that changes the map goes through this thread as a [`Command`]: local writes,
//! messages from peers, anti-entropy ticks. The thread takes whatever commands are queued (up to
//! a bound), applies them all, commits them in **one** SQLite transaction, and only then
//! acknowledges the writers, updates the read view, emits events and sends to peers. That is
//! group commit: one fsync serves a whole batch, which is what makes `Durability::Full`
//! affordable under concurrency.
//!
//! Reads never come here: [`ReadView`] holds each live key's value hash (updated after every
//! commit) and reads value bytes through its own read-only SQLite connection.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

use crate::{
    clock::Clocks,
    doc::{self, hlc::Hlc, value_hash, Entry, KvDoc, NodeBytes, ValueHash},
    error::{Error, Result},
    events::Event,
    history::{self, Action, Coordinator, EpochId, Policy, Usage},
    store::{Durability, Reader, Store},
    sync::{DataMsg, Loaded, LoadedWhole, PeerSync, Received, SyncError, WholeDoc},
};

mod outflow;
pub(crate) use outflow::{DataTx, Outflow};

/// Most commands folded into one transaction.
const MAX_BATCH: usize = 4096;
/// A batch stops taking local writes once it holds this many value bytes (keeps each pushed
/// message well under the frame limit).
const MAX_BATCH_VALUE_BYTES: usize = 4 << 20;
/// Most bytes of values answered in one `Values` message.
const MAX_VALUES_REPLY: usize = 4 << 20;
/// Most hashes asked for in one `Want` message.
const MAX_WANT: usize = 16_384;
/// Most bytes of values pushed unasked behind a whole document (a snapshot transfer): they are
/// read into memory and queued for the peer at once, so a large store sends this much and the
/// new node asks for the rest (after `REASK_AFTER`). 64 `Values` messages, far below the
/// send queue's capacity.
#[cfg(not(test))]
const MAX_PUSHED_VALUES: usize = 256 << 20;
/// (Small in unit tests, so that a test store exceeds it.)
#[cfg(test)]
const MAX_PUSHED_VALUES: usize = 64 << 10;
/// Above this many new changes in one batch, the view is rebuilt by a scan of the document
/// instead of decoding each change.
const RESCAN_THRESHOLD: usize = 2_000;
/// A value asked for and not received is asked for again after this long (from whichever
/// peer the rotation picks).
const REASK_AFTER: Duration = Duration::from_secs(3);
/// Change rows are folded into a new snapshot once they weigh more than the snapshot and this.
/// (A graceful shutdown folds whatever there is, so this bounds reopen after a crash. Saving
/// a 100k-key snapshot costs about half a second: a fresh node catching up should not pay it
/// for its first few MB of changes.)
const MIN_COMPACT_BYTES: usize = 4 << 20;

/// After this many bytes of values and changes processed, the first idle tick (a whole tick
/// interval without any) gives memory back: SQLite's page caches, and on glibc the heap memory
/// freed since (see [`Replica::release_memory`]).
const RELEASE_AFTER_BYTES: u64 = 4 << 20;

/// One local write.
#[derive(Debug, Clone)]
pub(crate) enum WriteOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// Work for the replica thread.
pub(crate) enum Command {
    /// Local writes, acknowledged after they are durable.
    Write {
        ops: Vec<WriteOp>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// An authenticated data stream to `peer` exists; send to it through `tx`.
    PeerUp {
        peer: NodeBytes,
        conn_id: u64,
        tx: DataTx,
    },
    /// The connection `conn_id` to `peer` wrote out most of the values queued for it (see
    /// [`outflow`]): read more, if any are left to send.
    Drained { peer: NodeBytes, conn_id: u64 },
    /// The data stream to `peer` over connection `conn_id` is gone.
    PeerDown { peer: NodeBytes, conn_id: u64 },
    /// A message from a peer, received over connection `conn_id`. The permit returns the
    /// message's bytes to the connection's read budget once the message is processed.
    FromPeer {
        peer: NodeBytes,
        conn_id: u64,
        msg: DataMsg,
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// Anti-entropy: run a sync round with every peer, re-request missing values; and the
    /// compaction policy's timer.
    Tick,
    /// The election's outcome changed: `leading` is this node's term if it leads.
    Leadership {
        leading: Option<u64>,
        leader: Option<NodeBytes>,
    },
    /// Persist the election term and, when given, the election's last reported leader (an
    /// opaque record, see `net::ElectionRecord`).
    SetTerm {
        term: u64,
        leader: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Remember a peer's address (postcard-encoded `EndpointAddr`).
    SavePeerAddr { peer: NodeBytes, addr: Vec<u8> },
    /// Fold change rows into a snapshot now and drop unreferenced values; and start a new
    /// epoch (on the leader; a follower asks the leader).
    Compact { reply: oneshot::Sender<Result<()>> },
    /// Persist per-peer state and stop.
    Shutdown { reply: oneshot::Sender<()> },
    /// The whole document `peer` sent over connection `conn_id` was loaded on the loader
    /// thread (see [`Loading`]). Sent by the replica to itself.
    Loaded {
        peer: NodeBytes,
        conn_id: u64,
        result: Box<std::result::Result<LoadedWhole, SyncError>>,
    },
}

/// Read side shared with the `Swarm` handle.
pub(crate) struct ReadView {
    map: RwLock<BTreeMap<String, ValueHash>>,
    reader: Mutex<Reader>,
    epoch: Mutex<EpochId>,
    /// Commits (of a batch or of an epoch switch) that failed since the replica opened.
    failed_commits: std::sync::atomic::AtomicU64,
    /// Most bytes of values ever queued for one peer (see [`outflow`]).
    #[cfg(test)]
    max_queued_values: std::sync::atomic::AtomicUsize,
}

impl ReadView {
    /// How many commits failed since the replica opened (each one was recovered from, or is
    /// being retried). Tests wait on it to know that an injected fault was hit.
    #[cfg(test)]
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Most bytes of values ever queued for one peer.
    #[cfg(test)]
    pub fn max_queued_values(&self) -> usize {
        self.max_queued_values
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_failed_commit(&self) {
        self.failed_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The epoch of the document.
    pub fn epoch(&self) -> EpochId {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        // A compaction may drop a value between reading its hash and reading its bytes if the
        // key was overwritten in between; reading the view again then finds the new hash.
        for _ in 0..4 {
            let hash = match self.map.read() {
                Ok(m) => m.get(key).copied(),
                Err(p) => p.into_inner().get(key).copied(),
            };
            let Some(hash) = hash else { return Ok(None) };
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = reader.blob(&hash)? {
                return Ok(Some(v));
            }
        }
        Err(Error::Storage(format!(
            "value of key {key:?} is missing from the value table"
        )))
    }

    /// Live keys in order, starting with `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        m.range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every hash the view points at. Values are garbage-collected only when neither the
    /// document nor the view references them: the view is brought up to date after the commit
    /// that drops values, and a reader must never find a hash in it whose value is gone
    /// (that race made `get` fail while an epoch switch vacuumed the file).
    fn hashes(&self) -> HashSet<ValueHash> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        m.values().copied().collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ValueHash>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the replica thread hands back once it has opened the store.
pub(crate) struct Opened {
    pub tx: mpsc::Sender<Command>,
    pub view: Arc<ReadView>,
    pub secret_key: [u8; 32],
    pub term: u64,
    /// The election's last reported leader, as `SetTerm` stored it.
    pub term_leader: Option<Vec<u8>>,
    pub peer_addrs: Vec<(NodeBytes, Vec<u8>)>,
    /// Joined on shutdown so the directory lock is released before `shutdown` returns.
    pub thread: std::thread::JoinHandle<()>,
}

/// Everything the replica needs to open.
pub(crate) struct ReplicaConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub events: broadcast::Sender<Event>,
    /// Told about peers that broke the protocol, so their connection is closed.
    pub misbehaved: mpsc::UnboundedSender<(NodeBytes, String)>,
    /// When to start new epochs.
    pub policy: Policy,
    /// The wall clock, and peers' clocks as measured (for tombstone expiry).
    pub clocks: Arc<Clocks>,
}

/// Opens the store in `cfg.dir` on a new thread and runs the replica there.
pub(crate) fn spawn(cfg: ReplicaConfig) -> Result<Opened> {
    let (tx, rx) = mpsc::channel(8192);
    // Weak: the replica's own sender must not keep it running once every handle is gone.
    let own_tx = tx.downgrade();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("murmur-replica".into())
        .spawn(move || match Replica::open(cfg, own_tx) {
            Err(e) => {
                let _ = opened_tx.send(Err(e));
            }
            Ok((replica, info)) => {
                let _ = opened_tx.send(Ok(info));
                replica.run(rx);
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start replica thread: {e}")))?;
    match opened_rx.recv() {
        Ok(Ok((view, secret_key, (term, term_leader), peer_addrs))) => Ok(Opened {
            tx,
            view,
            secret_key,
            term,
            term_leader,
            peer_addrs,
            thread,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(Error::Storage("replica thread died while opening".into())),
    }
}

struct PeerLink {
    /// The connection this link belongs to; messages and notices about others are stale.
    conn_id: u64,
    /// The epoch the peer last announced.
    epoch: Option<EpochId>,
    /// The peer is in an older epoch and fetching ours: answer its sync messages.
    serving: bool,
    /// This connection already pushed every value behind a whole document (automerge may send
    /// the whole document again before the peer's first reply; the values need to go once).
    values_pushed: bool,
    sync: PeerSync,
    tx: DataTx,
    /// Values this peer asked for and not yet sent, in the order to read them (see
    /// [`outflow`]).
    outbox: VecDeque<ValueHash>,
    /// The hashes in `outbox` (a value asked for twice goes once).
    outboxed: HashSet<ValueHash>,
    /// A snapshot transfer in progress: every value is pushed unasked, read in storage order as
    /// the queue to the peer drains.
    snapshot: Option<SnapshotPush>,
}

/// Where a snapshot transfer to one peer stands.
struct SnapshotPush {
    /// The values to push (those the view held when the transfer started).
    wanted: HashSet<ValueHash>,
    /// The scan of the values table resumes after this row.
    after: i64,
    /// Bytes that may still be pushed (at most `MAX_PUSHED_VALUES`; the peer asks for the
    /// rest).
    left: usize,
}

impl PeerLink {
    /// Adds values to send, in order, skipping those already waiting.
    fn enqueue(&mut self, hashes: impl IntoIterator<Item = ValueHash>) {
        for h in hashes {
            if self.outboxed.insert(h) {
                self.outbox.push_back(h);
            }
        }
    }

    fn has_values_to_send(&self) -> bool {
        !self.outbox.is_empty() || self.snapshot.is_some()
    }
}

type OpenInfo = (
    Arc<ReadView>,
    [u8; 32],
    (u64, Option<Vec<u8>>),
    Vec<(NodeBytes, Vec<u8>)>,
);

/// A whole document sent to this empty replica, being loaded on another thread.
///
/// Loading is the longest step of a join, and the values the sender pushes right behind the
/// document take about as long to store: the replica thread stores them while the loader
/// thread loads (BENCHMARKS.md, W4). Meanwhile every other command waits in
/// [`Replica::deferred`], in arrival order: nothing may touch the still empty document, and
/// peers' messages are handled against the loaded one.
struct Loading {
    /// Who sent the document, over which connection.
    peer: NodeBytes,
    conn_id: u64,
    /// Values that arrived from `peer` during the load, stored before the document that
    /// references them was known: those it turns out not to reference are deleted.
    early: Vec<ValueHash>,
    /// Their bytes (at most `MAX_PUSHED_VALUES`, what the sender pushes).
    early_bytes: usize,
}

/// Another epoch's document being fetched from a peer (see [`crate::history`]).
struct Staging {
    epoch: EpochId,
    from: NodeBytes,
    doc: KvDoc,
    sync: PeerSync,
}

struct Replica {
    store: Store,
    doc: KvDoc,
    me: NodeBytes,
    view: Arc<ReadView>,
    events: broadcast::Sender<Event>,
    misbehaved: mpsc::UnboundedSender<(NodeBytes, String)>,
    peers: HashMap<NodeBytes, PeerLink>,
    /// Sync states persisted by earlier connections, by peer.
    saved_sync: HashMap<NodeBytes, Vec<u8>>,
    /// Values the document references that this replica does not have yet, with the keys
    /// waiting for them. Those keys keep their previous value in the view until they arrive.
    pending: HashMap<ValueHash, Pending>,
    /// Counts the batches that changed the document: a pending key recorded in the current
    /// generation still has the entry it was recorded with.
    doc_gen: u64,
    /// Rotates which peer is asked for pending values on each tick.
    want_rotation: usize,
    /// When each pending value was last asked for: asked again only after `REASK_AFTER`, so
    /// that a catch-up does not make a peer read and send every value several times.
    asked: HashMap<ValueHash, Instant>,
    snapshot_len: usize,
    change_bytes: usize,
    /// This node's own clock for stamps (peers' stamps never move it; see [`doc::hlc`]).
    hlc: Hlc,
    /// A commit failed and the document could not be reloaded from the store since: the
    /// in-memory document may hold changes the store lacks, so nothing may use it until a
    /// reload succeeds (tried again at the start of every batch).
    stale: bool,
    /// A commit failed and none has succeeded since ([`Event::StorageFailed`] was sent).
    storage_failing: bool,
    /// The wall clock and the measured peer clocks.
    clocks: Arc<Clocks>,
    /// The epoch protocol.
    coord: Coordinator,
    staging: Option<Staging>,
    /// A whole document being loaded on another thread.
    loading: Option<Loading>,
    /// Commands held back while `loading`, oldest first.
    deferred: VecDeque<Command>,
    /// The replica's own command queue, for the loader thread's [`Command::Loaded`].
    own_tx: mpsc::WeakSender<Command>,
    /// This node's term if it leads, and the current leader.
    leading: Option<u64>,
    leader: Option<NodeBytes>,
    started: Instant,
    /// Bytes of values and changes processed so far, as of the last tick, and as of the last
    /// memory release (see `RELEASE_AFTER_BYTES`).
    work: u64,
    work_at_tick: u64,
    work_at_release: u64,
}

/// Values being gathered into `Values` messages of about `MAX_VALUES_REPLY` bytes each.
#[derive(Default)]
struct ValuesBatch {
    values: Vec<Vec<u8>>,
    size: usize,
}

impl ValuesBatch {
    /// Adds a value; returns a full message when the batch reaches its size.
    fn push(&mut self, v: Vec<u8>) -> Option<DataMsg> {
        self.size += v.len();
        self.values.push(v);
        (self.size >= MAX_VALUES_REPLY).then(|| {
            self.size = 0;
            DataMsg::Values {
                values: std::mem::take(&mut self.values),
            }
        })
    }

    /// The last, partly filled message.
    fn finish(self) -> Option<DataMsg> {
        (!self.values.is_empty()).then_some(DataMsg::Values {
            values: self.values,
        })
    }
}

/// The keys waiting for one value.
struct Pending {
    /// The document generation ([`Replica::doc_gen`]) of the oldest key here. If the document
    /// has not changed since, every key's winning entry is still this value: it goes into the
    /// view when the value arrives, without looking the key up again.
    since: u64,
    /// The keys, each with the entry that waits for this value (a key looked at again while
    /// the value is still missing, as every rescan does, replaces its record). Almost always
    /// one key: a vector, since a map per value cost 100k allocations in a 100k-key join.
    keys: Vec<(String, Entry)>,
    /// Position of each key in `keys`, once there are more than a few (many keys can share a
    /// value); empty (unallocated) until then.
    index: HashMap<String, usize>,
}

/// Keys of one pending value found by a linear search below this many.
const PENDING_INDEX_FROM: usize = 8;

impl Pending {
    /// Records that `key` waits for this value, as of generation `gen`.
    fn add(
        pending: &mut HashMap<ValueHash, Pending>,
        hash: ValueHash,
        key: String,
        entry: Entry,
        gen: u64,
    ) {
        let p = pending.entry(hash).or_insert(Pending {
            since: gen,
            keys: Vec::new(),
            index: HashMap::new(),
        });
        p.since = p.since.min(gen);
        if p.index.is_empty() && p.keys.len() >= PENDING_INDEX_FROM {
            p.index = p
                .keys
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
        }
        let at = if p.index.is_empty() {
            p.keys.iter().position(|(k, _)| *k == key)
        } else {
            p.index.get(&key).copied()
        };
        match at {
            Some(i) => p.keys[i].1 = entry,
            None => {
                if !p.index.is_empty() {
                    p.index.insert(key.clone(), p.keys.len());
                }
                p.keys.push((key, entry));
            }
        }
    }
}

/// How a batch's new changes reached the disk.
enum Persisted {
    /// As change rows of this many bytes.
    Rows(usize),
    /// Folded, with everything before, into a snapshot of this many bytes.
    Snapshot(usize),
}

/// Per-batch bookkeeping of what to do after the commit.
#[derive(Default)]
struct Effects {
    acks: Vec<oneshot::Sender<Result<()>>>,
    /// Keys touched by this node's writes, with the entry each write made.
    local_keys: Vec<(String, Entry)>,
    /// Keys touched by peers, with the origin to report for deletions.
    remote_keys: Vec<(String, NodeBytes)>,
    /// Peers whose sync state must be polled (a reply may be due).
    poll: HashSet<NodeBytes>,
    /// Peers whose connection must be closed for a protocol error.
    bad: Vec<(NodeBytes, String)>,
    /// Peers from which pending values should be requested after this batch.
    ask: HashSet<NodeBytes>,
    /// Peers with values in their outbox to send after this batch, as far as their queues
    /// have room.
    fill: HashSet<NodeBytes>,
    /// Peers that sent changes: ask them for values still missing after the batch.
    ask_if_pending: HashSet<NodeBytes>,
    rescan: Option<NodeBytes>,
    /// A peer's whole document filled this (empty) replica: its bytes and heads.
    loaded: Option<Loaded>,
    /// A whole document was loaded in this batch (`loaded` was taken for the commit).
    loaded_whole: bool,
    /// Every key's winning entry, when the batch changed the document in bulk (`rescan`).
    winners: Option<Vec<(String, Entry)>>,
    /// Values stored during a load that ended in this batch, until the loaded document
    /// shows which of them it does not reference: those are deleted.
    unreferenced: Vec<ValueHash>,
    shutdown: Option<oneshot::Sender<()>>,
    compact: Vec<oneshot::Sender<Result<()>>>,
    /// Sync states to persist.
    persist_sync: Vec<(NodeBytes, Vec<u8>)>,
    terms: Vec<(u64, oneshot::Sender<Result<()>>)>,
    /// The election's last reported leader, from the latest `SetTerm` that had one.
    term_leader: Option<Vec<u8>>,
    addrs: Vec<(NodeBytes, Vec<u8>)>,
    tick: bool,
    /// The staged epoch's document is complete: carry and switch to it.
    adopt: bool,
    /// `Swarm::compact` was called.
    compact_requested: bool,
}

impl Replica {
    fn open(cfg: ReplicaConfig, own_tx: mpsc::WeakSender<Command>) -> Result<(Replica, OpenInfo)> {
        // The store indexes its values (one scan, on another thread) while this one loads the
        // document: BENCHMARKS.md, W5.
        let (store, loaded) = Store::open_and(&cfg.dir, cfg.durability, |store| {
            let secret_key = store.secret_key()?;
            let me: NodeBytes = iroh::SecretKey::from_bytes(&secret_key)
                .public()
                .as_bytes()
                .to_owned();
            let stored = store.load_doc()?;
            let snapshot_len = stored.snapshot.as_ref().map_or(0, |s| s.len());
            let change_bytes: usize = stored.changes.iter().map(|c| c.len()).sum();
            let epoch = store.epoch()?;
            let doc = KvDoc::load(stored.snapshot.as_deref(), &stored.changes, &me, &epoch)
                .map_err(|e| store.corrupt(e))?;
            // Read while the open may still fail leaving the file untouched (`Store::open_and`).
            let term = store.meta_i64("term")?.unwrap_or(0).max(0) as u64;
            let term_leader = store.meta("term_leader")?;
            let peer_addrs = store.peer_addrs()?;
            let saved_sync = store.peer_sync_states()?;
            let parts = (
                snapshot_len,
                change_bytes,
                epoch,
                doc,
                (term, term_leader),
                peer_addrs,
                saved_sync,
            );
            Ok((secret_key, me, parts))
        })?;
        let (secret_key, me, parts) = loaded;
        let (snapshot_len, change_bytes, epoch, doc, (term, term_leader), peer_addrs, saved_sync) =
            parts;
        let saved_sync = saved_sync.into_iter().collect();
        let reader = store.reader()?;

        let all = doc.all_entries();
        let mut present = Vec::with_capacity(all.len());
        let mut pending: HashMap<ValueHash, Pending> = HashMap::new();
        for (key, e) in all {
            if e.is_tombstone() {
                continue;
            }
            if store.has_blob(&e.hash) {
                present.push((key, e.hash));
            } else {
                Pending::add(&mut pending, e.hash, key, e, 0);
            }
        }
        // Built in one go from key order (automerge's), not by as many inserts.
        let map: BTreeMap<String, ValueHash> = present.into_iter().collect();
        let view = Arc::new(ReadView {
            map: RwLock::new(map),
            reader: Mutex::new(reader),
            epoch: Mutex::new(epoch),
            failed_commits: Default::default(),
            #[cfg(test)]
            max_queued_values: Default::default(),
        });
        let replica = Replica {
            store,
            doc,
            me,
            view: view.clone(),
            events: cfg.events,
            misbehaved: cfg.misbehaved,
            peers: HashMap::new(),
            saved_sync,
            pending,
            doc_gen: 0,
            want_rotation: 0,
            asked: HashMap::new(),
            snapshot_len,
            change_bytes,
            hlc: Hlc::default(),
            stale: false,
            storage_failing: false,
            clocks: cfg.clocks,
            coord: Coordinator::new(me, epoch, cfg.policy),
            staging: None,
            loading: None,
            deferred: VecDeque::new(),
            own_tx,
            leading: None,
            leader: None,
            started: Instant::now(),
            work: 0,
            work_at_tick: 0,
            work_at_release: 0,
        };
        Ok((replica, (view, secret_key, (term, term_leader), peer_addrs)))
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            // Commands held back during a load go first, once it is over.
            let first = match self.next_deferred() {
                Some(cmd) => cmd,
                None => match rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            let mut batch = vec![first];
            let mut value_bytes = 0;
            while batch.len() < MAX_BATCH && value_bytes < MAX_BATCH_VALUE_BYTES {
                let next = match self.next_deferred() {
                    Some(cmd) => Ok(cmd),
                    None => rx.try_recv(),
                };
                match next {
                    Ok(cmd) => {
                        if let Command::Write { ops, .. } = &cmd {
                            value_bytes += ops
                                .iter()
                                .map(|o| match o {
                                    WriteOp::Put { value, .. } => value.len(),
                                    WriteOp::Delete { .. } => 0,
                                })
                                .sum::<usize>();
                        }
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            if self.process(batch) {
                return;
            }
        }
        // Every handle is gone without a shutdown: persist what we can.
        let _ = self.persist_all_sync();
    }

    /// The oldest command held back by a load that is over.
    fn next_deferred(&mut self) -> Option<Command> {
        if self.loading.is_some() {
            return None;
        }
        self.deferred.pop_front()
    }

    /// Whether `cmd` must wait for the load in progress (if any). Values from the peer whose
    /// document loads do not (they are what the load overlaps with); neither does the load's
    /// result.
    fn must_wait(&self, cmd: &Command) -> bool {
        let Some(loading) = &self.loading else {
            return false;
        };
        match cmd {
            Command::Loaded { .. } => false,
            Command::FromPeer {
                peer,
                conn_id,
                msg: DataMsg::Values { .. },
                ..
            } => *peer != loading.peer || *conn_id != loading.conn_id,
            _ => true,
        }
    }

    /// Starts loading a whole document on another thread (see [`Loading`]).
    fn start_load(&mut self, peer: NodeBytes, conn_id: u64, whole: WholeDoc) {
        let (me, epoch, done) = (self.me, self.coord.epoch(), self.own_tx.clone());
        let spawned = std::thread::Builder::new()
            .name("murmur-load".into())
            .spawn(move || {
                #[cfg(test)]
                load_gate::pass(&me);
                let result = Box::new(whole.load(&me, &epoch));
                // No receiver: the replica is gone, and the document with it.
                if let Some(tx) = done.upgrade() {
                    let _ = tx.blocking_send(Command::Loaded {
                        peer,
                        conn_id,
                        result,
                    });
                }
            });
        match spawned {
            Ok(_) => {
                debug!(peer = %node_id_string(&peer), "loading a whole document");
                self.loading = Some(Loading {
                    peer,
                    conn_id,
                    early: Vec::new(),
                    early_bytes: 0,
                });
            }
            // The message is dropped with the closure; the sync state is untouched, so the
            // peer sends the document again (see `PeerSync::poll`).
            Err(e) => warn!("cannot start a thread to load a peer's document: {e}"),
        }
    }

    /// Takes the loader thread's result: the document replaces the empty one.
    fn finish_load(
        &mut self,
        peer: NodeBytes,
        conn_id: u64,
        result: std::result::Result<LoadedWhole, SyncError>,
        fx: &mut Effects,
    ) {
        let Some(loading) = self.loading.take() else {
            return;
        };
        fx.unreferenced = loading.early;
        match result {
            Ok(l) => {
                self.doc = l.doc;
                if let Some(link) = self
                    .peers
                    .get_mut(&peer)
                    .filter(|link| link.conn_id == conn_id)
                {
                    link.sync.loaded(l.state);
                }
                if l.loaded.is_some() {
                    fx.loaded = l.loaded;
                    fx.winners = Some(l.winners);
                }
                fx.poll.insert(peer);
                fx.ask_if_pending.insert(peer);
            }
            Err(e) => fx.bad.push((peer, e.to_string())),
        }
    }

    /// Applies a batch; returns true when the replica must stop.
    fn process(&mut self, batch: Vec<Command>) -> bool {
        if self.stale {
            self.reload_document("an earlier failed commit");
        }
        let mut fx = Effects::default();
        let heads_before = self.doc.heads();
        let mut local_values: Vec<(ValueHash, Vec<u8>)> = Vec::new();
        // Values from peers, each with its hash.
        let mut incoming_values: Vec<(ValueHash, Vec<u8>)> = Vec::new();
        let mut doc_error = None;
        // Set when a load ends in this batch with commands still held back: the rest of the
        // batch queues behind them, so that everything runs in arrival order.
        let mut behind = false;

        for cmd in batch {
            if behind || self.must_wait(&cmd) {
                self.deferred.push_back(cmd);
                continue;
            }
            match cmd {
                // A document broken earlier in this batch is not touched again: the batch
                // fails as a whole (see below).
                Command::Write { reply, .. } if self.doc_unusable() => fx.acks.push(reply),
                Command::Write { ops, reply } => {
                    for op in ops {
                        let r = match op {
                            WriteOp::Put { key, value } => {
                                let h = value_hash(&value);
                                let t = self.stamp(&key);
                                let r = self.doc.put(&key, &h, t);
                                local_values.push((h, value));
                                fx.local_keys.push((
                                    key,
                                    Entry {
                                        hash: h,
                                        hlc: t,
                                        origin: self.me,
                                    },
                                ));
                                r
                            }
                            WriteOp::Delete { key } => {
                                let t = self.stamp(&key);
                                let r = self.doc.delete(&key, t);
                                fx.local_keys.push((
                                    key,
                                    Entry {
                                        hash: doc::TOMBSTONE,
                                        hlc: t,
                                        origin: self.me,
                                    },
                                ));
                                r
                            }
                        };
                        if let Err(e) = r {
                            doc_error = Some(e.to_string());
                        }
                    }
                    fx.acks.push(reply);
                }
                Command::PeerUp { peer, conn_id, tx } => {
                    debug!(peer = %node_id_string(&peer), conn_id, "replica: peer up");
                    // A replaced connection's sync state is carried over as persisted state.
                    let saved = match self.peers.get(&peer) {
                        Some(old) => Some(old.sync.persisted()),
                        None => self.saved_sync.get(&peer).cloned(),
                    };
                    self.peers.insert(
                        peer,
                        PeerLink {
                            conn_id,
                            epoch: None,
                            serving: false,
                            values_pushed: false,
                            sync: PeerSync::new(saved.as_deref()),
                            tx,
                            outbox: VecDeque::new(),
                            outboxed: HashSet::new(),
                            snapshot: None,
                        },
                    );
                    // Syncing starts once the peer says it is in the same epoch.
                    self.coord.peer_up(peer);
                    if !self.pending.is_empty() {
                        fx.ask.insert(peer);
                    }
                    // A newer epoch being fetched from this peer ran over the connection this
                    // one replaces: what was in flight on it is lost, and the fetch's sync state
                    // would wait for it for good (a restarted node whose dial crossed its
                    // peer's stopped converging). Both sides start the fetch's sync afresh.
                    if let Some(st) = self.staging.as_mut().filter(|st| st.from == peer) {
                        st.sync = PeerSync::new(None);
                        self.send(peer, DataMsg::Resync, false);
                        self.poll_staging();
                    }
                }
                Command::PeerDown { peer, conn_id } => {
                    if let Some(link) = self.peers.remove(&peer) {
                        if link.conn_id != conn_id {
                            // A notice about a connection that was already replaced.
                            self.peers.insert(peer, link);
                            continue;
                        }
                        if link.epoch == Some(self.coord.epoch()) {
                            let st = link.sync.persisted();
                            self.saved_sync.insert(peer, st.clone());
                            fx.persist_sync.push((peer, st));
                        }
                        self.coord.peer_down(&peer);
                        if self.staging.as_ref().is_some_and(|s| s.from == peer) {
                            self.staging = None;
                        }
                    }
                }
                Command::FromPeer {
                    peer, conn_id, msg, ..
                } => {
                    let current = self.peers.get(&peer).is_some_and(|l| l.conn_id == conn_id);
                    if current && !self.doc_unusable() {
                        self.handle_peer_msg(peer, msg, &mut fx, &mut incoming_values);
                    }
                }
                Command::Tick => fx.tick = true,
                Command::Drained { peer, conn_id } => {
                    if self.peers.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                        fx.fill.insert(peer);
                    }
                }
                Command::Leadership { leading, leader } => {
                    self.leading = leading;
                    self.leader = leader;
                }
                Command::SetTerm {
                    term,
                    leader,
                    reply,
                } => {
                    fx.term_leader = leader.or(fx.term_leader.take());
                    fx.terms.push((term, reply));
                }
                Command::SavePeerAddr { peer, addr } => fx.addrs.push((peer, addr)),
                Command::Compact { reply } => {
                    fx.compact.push(reply);
                    fx.compact_requested = true;
                }
                Command::Shutdown { reply } => {
                    fx.shutdown = Some(reply);
                    for (peer, link) in &self.peers {
                        fx.persist_sync.push((*peer, link.sync.persisted()));
                    }
                }
                Command::Loaded {
                    peer,
                    conn_id,
                    result,
                } => {
                    self.finish_load(peer, conn_id, *result, &mut fx);
                    behind = !self.deferred.is_empty();
                }
            }
        }

        if self.stale {
            // The store is still failing: nothing was applied, writes are refused.
            let e = Error::Storage(
                "the replica cannot reload its document from the database after a failed \
                 commit (see the earlier error); the write was not made, retry it once storage \
                 works again"
                    .into(),
            );
            self.view.count_failed_commit();
            return self.fail_batch(fx, &e);
        }
        if self.doc.is_broken() {
            // Automerge panicked on a peer's input (that peer is reported as misbehaving): the
            // in-memory document may be half-changed, so the whole batch is dropped and the
            // document reloaded from the store.
            let e = Error::Storage(
                "a peer sent a change that automerge could not apply; the write was not made, \
                 retry it"
                    .into(),
            );
            warn!("{e}");
            self.drop_misbehaving(std::mem::take(&mut fx.bad));
            return self.fail_batch(fx, &e);
        }
        self.doc.commit_pending();
        // A whole document loaded into the empty replica is stored as the snapshot it is; only
        // changes after it (if any came in the same batch) are extracted.
        let loaded = fx.loaded.take();
        // Values were admitted unasked behind a whole document (see `handle_peer_msg`).
        let unasked = loaded.is_some();
        let (base_heads, loaded_snapshot) = match loaded {
            Some((bytes, heads)) if heads_before.is_empty() => {
                fx.loaded_whole = true;
                (heads, Some(bytes))
            }
            _ => (heads_before.clone(), None),
        };
        let heads_after = self.doc.heads();
        if heads_after != heads_before {
            self.doc_gen += 1;
        }
        let new_changes = if heads_after == base_heads {
            Vec::new()
        } else {
            self.doc.changes_since(&base_heads)
        };
        // This batch's local writes are usually one change. They are several when a peer's
        // change or sync message was applied between them: automerge then closes the local
        // transaction early. Every part is pushed, or peers would hold later parts back as a
        // gap until a sync round brought the missing one (W3 of BENCHMARKS.md: up to 300 gaps
        // in 50k writes, each answered by sync rounds that split more changes).
        let (own, remote): (Vec<&automerge::Change>, Vec<&automerge::Change>) =
            new_changes.iter().partition(|c| self.doc.is_own(c));
        // Keys touched by peers: decode each change, or rescan everything after a bulk load.
        if remote.len() > RESCAN_THRESHOLD || unasked {
            fx.rescan = Some(self.me);
        } else {
            for c in &remote {
                let s = self.doc.summarize(c);
                let origin = s.origin.unwrap_or(self.me);
                fx.remote_keys
                    .extend(s.keys.into_iter().map(|k| (k, origin)));
            }
        }

        // After a bulk change, every key's winner is taken in one pass over the map (used by
        // `refresh_view`). With a whole document loaded, the values its sender pushed right
        // behind it may be in this batch, before any of them was known to be wanted: keep
        // those the document references.
        if fx.rescan.is_some() {
            let winners = fx.winners.take().unwrap_or_else(|| self.doc.all_entries());
            if unasked {
                let wanted: HashSet<ValueHash> = winners.iter().map(|(_, e)| e.hash).collect();
                incoming_values.retain(|(h, _)| wanted.contains(h) || self.pending.contains_key(h));
                // Values stored during the load that the document does not reference.
                fx.unreferenced.retain(|h| !wanted.contains(h));
            }
            fx.winners = Some(winners);
        }

        // A batch that acknowledges nothing to anyone (no local write, term, compaction or
        // shutdown: peers' changes and values only) need not wait for the disk: see
        // `Store::sync`.
        let relaxed = fx.acks.is_empty()
            && fx.terms.is_empty()
            && fx.compact.is_empty()
            && fx.shutdown.is_none();
        // One transaction for the whole batch.
        let commit = (|| -> Result<Persisted> {
            if let Some(e) = &doc_error {
                return Err(Error::Storage(format!("document rejected the write: {e}")));
            }
            let compact_now = !fx.compact.is_empty();
            let mut tx = self.store.tx()?;
            for (h, v) in &local_values {
                tx.insert_blob(h, v)?;
            }
            for (h, v) in &incoming_values {
                tx.insert_blob(h, v)?;
            }
            tx.delete_blobs(&fx.unreferenced)?;
            if let Some(snap) = &loaded_snapshot {
                tx.replace_snapshot(snap)?;
            }
            // Also fold on shutdown: the next open then loads one snapshot, which is several
            // times faster than applying change rows one by one (BENCHMARKS.md, W5).
            let fold = compact_now
                || (fx.shutdown.is_some() && (self.change_bytes > 0 || !new_changes.is_empty()))
                || self.change_bytes
                    + new_changes
                        .iter()
                        .map(|c| c.raw_bytes().len())
                        .sum::<usize>()
                    > self.snapshot_len.max(MIN_COMPACT_BYTES);
            let persisted = if fold {
                let snap = self.doc.save();
                tx.replace_snapshot(&snap)?;
                let mut keep = self.doc.visible_hashes();
                keep.extend(self.pending.keys().copied());
                keep.extend(self.view.hashes());
                let dropped = tx.retain_blobs(&keep)?;
                debug!(snapshot = snap.len(), dropped, "compacted");
                Persisted::Snapshot(snap.len())
            } else {
                let mut bytes = 0;
                for c in &new_changes {
                    tx.insert_change(c.raw_bytes())?;
                    bytes += c.raw_bytes().len();
                }
                Persisted::Rows(bytes)
            };
            for (peer, st) in &fx.persist_sync {
                tx.set_peer_sync(peer, st)?;
            }
            for (term, _) in &fx.terms {
                tx.set_meta("term", &(*term as i64).to_be_bytes())?;
            }
            if let Some(leader) = &fx.term_leader {
                tx.set_meta("term_leader", leader)?;
            }
            for (peer, addr) in &fx.addrs {
                tx.set_peer_addr(peer, addr)?;
            }
            self.work += local_values
                .iter()
                .chain(&incoming_values)
                .map(|(_, v)| v.len() as u64)
                .chain(new_changes.iter().map(|c| c.raw_bytes().len() as u64))
                .sum::<u64>();
            tx.commit_unsynced()?;
            Ok(persisted)
        })();

        match commit {
            Ok(Persisted::Snapshot(len)) => {
                self.snapshot_len = len;
                self.change_bytes = 0;
                if !fx.compact.is_empty() || fx.shutdown.is_some() {
                    // An explicit compaction (or the fold at shutdown) also gives the freed
                    // pages back.
                    self.store.shrink();
                }
            }
            Ok(Persisted::Rows(bytes)) => {
                if let Some(snap) = &loaded_snapshot {
                    self.snapshot_len = snap.len();
                    self.change_bytes = 0;
                }
                self.change_bytes += bytes;
            }
            Err(e) => {
                warn!("commit failed: {e}");
                self.view.count_failed_commit();
                if doc_error.is_none() {
                    self.storage_failed(&e);
                }
                return self.fail_batch(fx, &e);
            }
        }
        self.storage_works();

        // Committed: tell others first (replication latency runs from here: BENCHMARKS.md,
        // W2), while the disk syncs the commit; then make it visible (so a writer reads its own
        // write as soon as it returns) and acknowledge once it is durable. Peers may hold a
        // change that a power loss takes from this node: it comes back from them by sync, like
        // any write that was never acknowledged.
        if !own.is_empty() {
            let mut peers = self.in_step_peers();
            if let Some(last) = peers.pop() {
                let msg = DataMsg::Push {
                    epoch: self.coord.epoch(),
                    changes: own.iter().map(|c| c.raw_bytes().to_vec()).collect(),
                    values: local_values.iter().map(|(_, v)| v.clone()).collect(),
                };
                for p in peers {
                    self.send(p, msg.clone(), true);
                }
                self.send(last, msg, true);
            }
        }
        let durable = if relaxed { Ok(()) } else { self.store.sync() };
        if let Err(e) = &durable {
            warn!("{e}");
        }
        // What every acknowledgement of this batch says.
        let answer = || durable.as_ref().map_err(clone_err).copied();
        self.refresh_view(&mut fx, &local_values, &incoming_values);
        for a in fx.acks.drain(..) {
            let _ = a.send(answer());
        }
        for (_, a) in fx.terms.drain(..) {
            let _ = a.send(answer());
        }
        if fx.tick {
            fx.poll.extend(self.in_step_peers());
            self.poll_staging();
            if !self.pending.is_empty() && !self.peers.is_empty() {
                let mut ps: Vec<_> = self.peers.keys().copied().collect();
                ps.sort();
                self.want_rotation = self.want_rotation.wrapping_add(1);
                fx.ask.insert(ps[self.want_rotation % ps.len()]);
            }
        }
        for peer in std::mem::take(&mut fx.poll) {
            self.poll_peer(peer);
        }
        if !self.pending.is_empty() {
            fx.ask.extend(fx.ask_if_pending.drain());
        }
        for peer in std::mem::take(&mut fx.ask) {
            self.ask_pending(peer);
        }
        self.drop_misbehaving(std::mem::take(&mut fx.bad));
        // Values to send: to peers that asked or whose queue drained; to all on a tick (the
        // wake-up of `outflow` cannot be lost, but a failed batch drops its `Drained`).
        if fx.tick {
            fx.fill.extend(self.peers.keys().copied());
        }
        for peer in std::mem::take(&mut fx.fill) {
            self.fill_outbox(peer);
        }

        // The epoch protocol: adopt a fetched epoch, run the policy, ask for compactions.
        if fx.adopt {
            self.adopt();
        }
        // A follower asks the leader (if it knows one it is in step with).
        if fx.compact_requested && !self.coord.request(self.leading) {
            if let Some(leader) = self.leader.filter(|l| self.coord.in_step(l)) {
                self.send(leader, DataMsg::CompactRequest, false);
            }
        }
        if fx.tick {
            let usage = self.usage();
            let now = self.started.elapsed();
            self.coord.tick(now, self.leading, usage);
            if self.work == self.work_at_tick
                && self.work - self.work_at_release >= RELEASE_AFTER_BYTES
            {
                self.release_memory();
                self.work_at_release = self.work;
            }
            self.work_at_tick = self.work;
        }
        let cut_failed = self.run_actions();
        // After the actions: on the leader, `compact()` returns with the new epoch in place,
        // or with the reason it could not be stored.
        for a in fx.compact.drain(..) {
            let _ = a.send(match &cut_failed {
                Some(e) => Err(clone_err(e)),
                None => answer(),
            });
        }
        if let Some(s) = fx.shutdown {
            let _ = s.send(());
            return true;
        }
        false
    }

    fn handle_peer_msg(
        &mut self,
        peer: NodeBytes,
        msg: DataMsg,
        fx: &mut Effects,
        incoming: &mut Vec<(ValueHash, Vec<u8>)>,
    ) {
        let Some(link) = self.peers.get_mut(&peer) else {
            return; // raced with PeerDown
        };
        let epoch = self.coord.epoch();
        match &msg {
            DataMsg::Epoch { epoch: theirs } => {
                if link.epoch.is_some_and(|e| e != *theirs) {
                    // It switched epochs: what the sync state remembers is void.
                    link.sync = PeerSync::new(None);
                    link.serving = false;
                }
                link.epoch = Some(*theirs);
                self.coord.peer_epoch(peer, *theirs);
                return;
            }
            DataMsg::CompactRequest => {
                self.coord.request(self.leading);
                return;
            }
            DataMsg::Resync => {
                // The peer went back to its stored document (see `reload_document`): what our
                // sync state says it has, or was sent, may be gone. Start afresh, now.
                debug!(peer = %node_id_string(&peer), "peer asked for a fresh sync");
                link.sync = PeerSync::new(None);
                link.values_pushed = false;
                if let Some(st) = self.staging.as_mut().filter(|st| st.from == peer) {
                    st.sync = PeerSync::new(None);
                }
                fx.poll.insert(peer);
                return;
            }
            DataMsg::Push { epoch: theirs, .. } | DataMsg::Sync { epoch: theirs, .. } => {
                if *theirs != epoch {
                    self.handle_staging_msg(peer, *theirs, msg, fx, incoming);
                    return;
                }
                if !self.coord.in_step(&peer) {
                    if !matches!(msg, DataMsg::Sync { .. }) {
                        return; // it has not announced this epoch: its announcement is due
                    }
                    // A peer in another epoch syncing ours is fetching it (staging): serve it
                    // from a fresh sync state.
                    if !link.serving {
                        link.serving = true;
                        link.sync = PeerSync::new(None);
                    }
                }
            }
            DataMsg::Want { .. } | DataMsg::Values { .. } => {}
        }
        let conn_id = link.conn_id;
        match link.sync.receive_offloading(&mut self.doc, msg) {
            Ok(Received::Whole(whole)) => self.start_load(peer, conn_id, whole),
            Ok(Received::Pushed { values, referenced }) => {
                incoming.extend(
                    values
                        .into_iter()
                        .map(|v| (value_hash(&v), v))
                        .filter(|(h, _)| referenced.contains(h)),
                );
                if self.doc.has_missing_deps() {
                    // A gap: some earlier change never reached us. Sync to find it.
                    fx.poll.insert(peer);
                }
                fx.ask_if_pending.insert(peer);
            }
            Ok(Received::Synced { loaded }) => {
                if loaded.is_some() && fx.loaded.is_none() {
                    fx.loaded = loaded;
                }
                fx.poll.insert(peer);
                fx.ask_if_pending.insert(peer);
            }
            Ok(Received::Buffered) => {}
            Ok(Received::Values(values)) => {
                // Only values this replica asked for are kept; after a whole document loaded
                // in this batch, those it references are (checked before the commit); during
                // the load of one, those its sender pushes behind it, up to what it pushes.
                if let Some(l) = self.loading.as_mut() {
                    for v in values {
                        if l.early_bytes + v.len() > MAX_PUSHED_VALUES {
                            break;
                        }
                        l.early_bytes += v.len();
                        let h = value_hash(&v);
                        l.early.push(h);
                        incoming.push((h, v));
                    }
                    return;
                }
                let loaded = fx.loaded.is_some();
                incoming.extend(
                    values
                        .into_iter()
                        .map(|v| (value_hash(&v), v))
                        .filter(|(h, _)| loaded || self.pending.contains_key(h)),
                );
            }
            Ok(Received::Want(mut hashes)) => {
                // Answered from the outbox, as the queue to the peer drains (see `outflow`).
                hashes.truncate(MAX_WANT);
                let ordered = self.store.in_store_order(hashes);
                if let Some(link) = self.peers.get_mut(&peer) {
                    link.enqueue(ordered);
                    fx.fill.insert(peer);
                }
            }
            Err(e) => fx.bad.push((peer, e.to_string())),
        }
    }

    /// A change or sync message of another epoch: it feeds the document being fetched if it is
    /// that epoch's and comes from the peer it is fetched from; anything else is stale.
    fn handle_staging_msg(
        &mut self,
        peer: NodeBytes,
        epoch: EpochId,
        msg: DataMsg,
        fx: &mut Effects,
        incoming: &mut Vec<(ValueHash, Vec<u8>)>,
    ) {
        let Some(st) = self.staging.as_mut() else {
            return;
        };
        if st.epoch != epoch || st.from != peer {
            return;
        }
        match st.sync.receive(&mut st.doc, msg) {
            Ok(Received::Pushed { values, referenced }) => {
                incoming.extend(
                    values
                        .into_iter()
                        .map(|v| (value_hash(&v), v))
                        .filter(|(h, _)| referenced.contains(h)),
                );
            }
            Ok(Received::Synced { .. }) => {
                let msgs = st.sync.poll(&mut st.doc, epoch).msgs;
                for m in msgs {
                    self.send(peer, m, false);
                }
            }
            Ok(_) => return,
            Err(e) => {
                self.staging = None;
                self.coord.staging_failed();
                fx.bad.push((peer, e.to_string()));
                return;
            }
        }
        if let Some(st) = self.staging.as_mut() {
            if !st.doc.is_empty() && !st.doc.has_missing_deps() {
                fx.adopt = true;
            }
        }
    }

    /// Sends the next sync message of the epoch being fetched (also the retry on each tick).
    fn poll_staging(&mut self) {
        let Some(st) = self.staging.as_mut() else {
            return;
        };
        let msgs = st.sync.poll(&mut st.doc, st.epoch).msgs;
        let from = st.from;
        for m in msgs {
            self.send(from, m, false);
        }
    }

    /// The stamp of a local write to `key` now: above the key's winning entry, whoever wrote
    /// it (see [`doc::hlc`]).
    fn stamp(&mut self, key: &str) -> u64 {
        let seen = self.doc.winner(key).map(|e| e.hlc);
        self.hlc.stamp_over(self.clocks.now_ms(), seen)
    }

    /// Peers known to be in this replica's epoch.
    fn in_step_peers(&self) -> Vec<NodeBytes> {
        self.peers
            .keys()
            .filter(|p| self.coord.in_step(p))
            .copied()
            .collect()
    }

    /// The store's size as the compaction policy sees it.
    fn usage(&self) -> Usage {
        Usage {
            history_bytes: (self.snapshot_len + self.change_bytes) as u64,
            // A genesis costs about this much per key (key, entry, column overhead).
            live_bytes: self.view.len() as u64 * 64,
        }
    }

    /// Carries out what the epoch protocol asks for. Returns the error of a new epoch this
    /// replica cut but could not store (a `compact()` caller hears of it).
    fn run_actions(&mut self) -> Option<Error> {
        let mut failed = None;
        while let Some(action) = self.coord.poll_action() {
            match action {
                Action::Announce { to } => {
                    let epoch = self.coord.epoch();
                    self.send(to, DataMsg::Epoch { epoch }, false);
                }
                Action::Resync { peer } => {
                    self.poll_peer(peer);
                    self.ask_pending(peer);
                }
                Action::Stage { epoch, from } => {
                    debug!(peer = %node_id_string(&from), ?epoch, "fetching a newer epoch");
                    self.staging = Some(Staging {
                        epoch,
                        from,
                        doc: KvDoc::empty(&self.me, &epoch),
                        sync: PeerSync::new(None),
                    });
                    // The peer may have served this epoch to us before (a switch that failed
                    // to commit is fetched again): its sync state would believe we have it all.
                    self.send(from, DataMsg::Resync, false);
                    self.poll_staging();
                }
                Action::Cut { epoch } => {
                    if let Err(e) = self.cut(epoch) {
                        failed = Some(e);
                    }
                }
            }
        }
        failed
    }

    /// Starts epoch `epoch` from this replica's state (it leads).
    fn cut(&mut self, epoch: EpochId) -> Result<()> {
        let entries = history::genesis_entries(
            self.doc.all_entries(),
            self.coord.policy(),
            self.clocks.expiry_now_ms(),
        );
        match KvDoc::genesis(&epoch, &entries, &self.me) {
            Ok(new) => self.switch(new, epoch, 0),
            Err(e) => {
                warn!("cannot build the genesis of {epoch:?}: {e}");
                Err(Error::Storage(format!(
                    "cannot build the genesis of a new epoch: {e}"
                )))
            }
        }
    }

    /// Switches to the fetched epoch, carrying across every entry of the old document that
    /// beats the new one's.
    fn adopt(&mut self) {
        let Some(st) = self.staging.take() else {
            return;
        };
        let mut new = st.doc;
        let carried = history::carry(
            self.doc.all_entries(),
            |k| new.winner(k),
            self.coord.policy(),
            self.clocks.expiry_now_ms(),
        );
        for (k, e) in &carried {
            if let Err(err) = new.put_entry(k, e) {
                warn!("cannot carry {k:?} into {:?}: {err}", st.epoch);
                self.coord.staging_failed();
                return;
            }
        }
        new.commit_pending();
        // A failure is logged and retried (see `switch`).
        let _ = self.switch(new, st.epoch, carried.len());
    }

    /// Replaces the document with `new`, the document of `epoch`, in one transaction: the old
    /// history, its sync states and the values only it referenced are gone.
    ///
    /// If the store cannot commit it, nothing changes (the old document stays, in memory and
    /// on disk) and the epoch protocol fetches the epoch again later
    /// ([`Coordinator::switch_failed`]): a failed switch must not make the replica give up
    /// on the peers that are in the new epoch.
    fn switch(&mut self, mut new: KvDoc, epoch: EpochId, carried: usize) -> Result<()> {
        let bytes_before = (self.snapshot_len + self.change_bytes) as u64;
        let snap = new.save();
        let mut keep = new.visible_hashes();
        keep.extend(self.view.hashes());
        let result = (|| -> Result<usize> {
            let mut tx = self.store.tx()?;
            tx.replace_snapshot(&snap)?;
            tx.set_epoch(&epoch)?;
            let dropped = tx.retain_blobs(&keep)?;
            tx.commit()?;
            Ok(dropped)
        })();
        let dropped = match result {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot switch to epoch {epoch:?}, will try again: {e}");
                self.view.count_failed_commit();
                self.storage_failed(&e);
                self.coord.switch_failed(self.started.elapsed());
                return Err(e);
            }
        };
        self.storage_works();
        self.store.shrink();
        *self.view.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
        self.doc = new;
        self.snapshot_len = snap.len();
        self.change_bytes = 0;
        self.saved_sync.clear();
        for link in self.peers.values_mut() {
            link.sync = PeerSync::new(None);
        }
        // The view follows the new document; values it lacks are fetched again.
        self.pending.clear();
        self.asked.clear();
        let mut fx = Effects {
            rescan: Some(self.me),
            ..Effects::default()
        };
        self.refresh_view(&mut fx, &[], &[]);
        debug!(
            ?epoch,
            carried,
            dropped,
            bytes_before,
            bytes_after = snap.len(),
            "switched epoch"
        );
        let _ = self.events.send(Event::Compacted {
            epoch: epoch.n,
            term: epoch.term,
            keys: self.view.len() as u64,
            bytes_before,
            bytes_after: snap.len() as u64,
        });
        self.coord.switched(epoch, self.started.elapsed());
        Ok(())
    }

    /// Brings the view up to date with the document after a commit, and emits events.
    ///
    /// Each key to look at gets its winning entry from the cheapest source: the write this
    /// batch made, the pending record it waited with (when the document has not changed since),
    /// one pass over the whole map (after bulk changes), or a lookup in the document.
    fn refresh_view(
        &mut self,
        fx: &mut Effects,
        local_values: &[(ValueHash, Vec<u8>)],
        incoming_values: &[(ValueHash, Vec<u8>)],
    ) {
        let me = self.me;
        // Values that arrived release the keys waiting for them. If the document did not change
        // since a key started waiting, its entry is still the one it waited with.
        let mut ready: Vec<(String, Entry)> = Vec::new();
        let mut recheck: Vec<(String, NodeBytes)> = Vec::new();
        for (h, _) in incoming_values {
            self.asked.remove(h);
            if let Some(p) = self.pending.remove(h) {
                if p.since == self.doc_gen {
                    ready.extend(p.keys);
                } else {
                    recheck.extend(p.keys.into_iter().map(|(k, _)| (k, me)));
                }
            }
        }
        // Every key's winner after a bulk change; the keys to look at otherwise.
        let mut all = fx
            .rescan
            .map(|_| fx.winners.take().unwrap_or_else(|| self.doc.all_entries()));
        let mut touched: Vec<(String, NodeBytes)> = Vec::new();
        // Without changes from peers in this batch, a key this node wrote holds the entry of its
        // last write here: each write is stamped above the key's winning entry at the time
        // (`Replica::stamp`), and without peers' changes nothing else entered the document
        // since. That spares a document lookup per write.
        let mut known: HashMap<String, Entry> = HashMap::new();
        if all.is_none() {
            if fx.remote_keys.is_empty() {
                known.extend(fx.local_keys.iter().cloned());
            }
            touched.extend(fx.local_keys.drain(..).map(|(k, _)| (k, me)));
            touched.append(&mut fx.remote_keys);
            touched.append(&mut recheck);
            // Many keys at once: one pass over the map costs about as much as 20k lookups.
            if touched.len() > RESCAN_THRESHOLD && touched.len() > self.view.len() / 4 {
                all = Some(self.doc.all_entries());
            }
        }

        // Values written or received in this batch: no need to read them back from the store.
        let local: HashMap<ValueHash, &[u8]> = local_values
            .iter()
            .chain(incoming_values)
            .map(|(h, v)| (*h, v.as_slice()))
            .collect();
        let emit = self.events.receiver_count() > 0;
        let mut events = Vec::new();
        let store = &self.store;
        let pending = &mut self.pending;
        let doc_gen = self.doc_gen;
        let mut map = self.view.write();
        // A view still empty (a node that just joined) takes thousands of released keys in one
        // go: building a B-tree from sorted keys is several times faster than inserting them.
        if map.is_empty() && fx.rescan.is_none() && ready.len() > RESCAN_THRESHOLD {
            ready.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if emit {
                for (key, e) in &ready {
                    if let Some(v) = local.get(&e.hash) {
                        events.push(Event::Put {
                            key: key.clone(),
                            value: v.to_vec(),
                            origin: node_id_string(&e.origin),
                        });
                    }
                }
            }
            *map = ready.drain(..).map(|(k, e)| (k, e.hash)).collect();
        }
        // After a bulk change: keys of the view the document no longer has.
        let gone: Vec<String> = match (fx.rescan, &all) {
            (Some(_), Some(all)) => {
                let present: HashSet<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
                map.keys()
                    .filter(|k| !present.contains(k.as_str()))
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        };
        // A view still empty after a bulk change (a node that just loaded a whole document):
        // built in one go from the keys in order, instead of by as many inserts.
        if map.is_empty() && fx.rescan.is_some() {
            if let Some(entries) = all.take() {
                let mut present = Vec::with_capacity(entries.len());
                for (key, e) in entries.into_iter().filter(|(_, e)| !e.is_tombstone()) {
                    let here = local.contains_key(&e.hash) || store.has_blob(&e.hash);
                    if !here {
                        Pending::add(pending, e.hash, key, e, doc_gen);
                        continue;
                    }
                    if emit {
                        let value = match local.get(&e.hash) {
                            Some(v) => Some(v.to_vec()),
                            None => store.blob(&e.hash).ok().flatten(),
                        };
                        if let Some(value) = value {
                            events.push(Event::Put {
                                key: key.clone(),
                                value,
                                origin: node_id_string(&e.origin),
                            });
                        }
                    }
                    present.push((key, e.hash));
                }
                *map = present.into_iter().collect();
            }
        }
        // Sets one key's view entry to `entry` (None: no value), or records it as waiting for
        // its value.
        let mut apply = |key: String, entry: Option<Entry>, origin: NodeBytes| match entry {
            None => {
                if map.remove(&key).is_some() && emit {
                    events.push(Event::Deleted {
                        key,
                        origin: node_id_string(&origin),
                    });
                }
            }
            Some(e) => {
                if map.get(&key) == Some(&e.hash) {
                    return;
                }
                // Whether the value is here, and its bytes if an event needs them.
                let have: Option<Option<Vec<u8>>> = match local.get(&e.hash) {
                    Some(v) => Some(emit.then(|| v.to_vec())),
                    None if !store.has_blob(&e.hash) => None,
                    None if !emit => Some(None),
                    None => store.blob(&e.hash).ok().flatten().map(Some),
                };
                match have {
                    Some(None) => {
                        map.insert(key, e.hash);
                    }
                    Some(Some(value)) => {
                        map.insert(key.clone(), e.hash);
                        events.push(Event::Put {
                            key,
                            value,
                            origin: node_id_string(&e.origin),
                        });
                    }
                    None => Pending::add(pending, e.hash, key, e, doc_gen),
                }
            }
        };
        let live = |e: &Entry| !e.is_tombstone();
        match (fx.rescan, all) {
            // Every key of the document, and every key of the view it no longer has.
            (Some(origin), Some(all)) => {
                for key in gone {
                    apply(key, None, origin);
                }
                for (key, e) in all {
                    apply(key, Some(e).filter(live), origin);
                }
            }
            (_, all) => {
                let winners: Option<HashMap<String, Entry>> = all.map(|a| a.into_iter().collect());
                // Released keys are not among the touched ones (touching a key changes the
                // document). In key order, inserting thousands of them stays in warm B-tree
                // nodes.
                ready.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (key, e) in ready {
                    apply(key, Some(e), e.origin);
                }
                let mut seen = HashSet::new();
                for (key, origin) in touched {
                    if !seen.insert(key.clone()) {
                        continue;
                    }
                    let entry = match (&winners, known.get(&key)) {
                        (Some(w), _) => w.get(&key).copied(),
                        (None, Some(e)) => Some(*e),
                        (None, None) => self.doc.get(&key),
                    };
                    apply(key, entry.filter(live), origin);
                }
            }
        }
        drop(map);
        for e in events {
            let _ = self.events.send(e);
        }
        // The values of a document that arrived whole are on their way behind it (its sender
        // pushes them unasked): asking for them too would make the sender read them twice.
        if fx.loaded_whole {
            let now = Instant::now();
            for h in self.pending.keys() {
                self.asked.insert(*h, now);
            }
        }
    }

    fn poll_peer(&mut self, peer: NodeBytes) {
        let in_step = self.coord.in_step(&peer);
        let Some(link) = self.peers.get_mut(&peer) else {
            return;
        };
        if !in_step && !link.serving {
            return;
        }
        let polled = link.sync.poll(&mut self.doc, self.coord.epoch());
        if !polled.msgs.is_empty() {
            debug!(peer = %node_id_string(&peer), parts = polled.msgs.len(), "sending sync message");
        }
        let push_values = polled.whole && in_step && !link.values_pushed;
        link.values_pushed |= push_values;
        for m in polled.msgs {
            self.send(peer, m, false);
        }
        // Snapshot transfer: a peer with an empty document just got all of ours; send every
        // value the view holds right behind it, in one scan, instead of waiting for it to ask
        // (up to `MAX_PUSHED_VALUES`; it asks for the rest).
        // They are read as the queue to the peer drains (see `outflow`), by one sequential
        // scan of the values table.
        if push_values {
            let wanted = self.view.hashes();
            debug!(peer = %node_id_string(&peer), values = wanted.len(), "snapshot transfer");
            if let Some(link) = self.peers.get_mut(&peer) {
                link.snapshot = Some(SnapshotPush {
                    wanted,
                    after: i64::MIN,
                    left: MAX_PUSHED_VALUES,
                });
            }
            self.fill_outbox(peer);
        }
    }

    /// Reads values to send to `peer` (those it asked for first, then those of a snapshot
    /// transfer) from the store and queues them for it until its queue holds
    /// `MAX_QUEUED_VALUE_BYTES` of values (see [`outflow`]); the connection's writer asks for
    /// the rest ([`Command::Drained`]) once it has written most of them.
    fn fill_outbox(&mut self, peer: NodeBytes) {
        /// Hashes looked up per read transaction.
        const CHUNK: usize = 1024;
        loop {
            let Some(link) = self.peers.get_mut(&peer) else {
                return;
            };
            if !link.has_values_to_send() {
                return;
            }
            if !link.tx.flow.has_room() {
                if link.tx.flow.wait_for_room() {
                    continue;
                }
                return;
            }
            let room = outflow::MAX_QUEUED_VALUE_BYTES.saturating_sub(link.tx.flow.queued());
            let mut batch = ValuesBatch::default();
            let mut msgs = Vec::new();
            let mut taken = 0;
            let read = if link.outbox.is_empty() {
                // The snapshot transfer, resumed where the last fill stopped.
                let Some(snap) = link.snapshot.as_mut() else {
                    return;
                };
                let mut after = snap.after;
                let mut left = snap.left;
                let read = self.store.scan_blobs_after(snap.after, |id, h, v| {
                    after = id;
                    if !snap.wanted.contains(&h) {
                        return true;
                    }
                    if v.len() > left {
                        left = 0; // the rest is asked for
                        return false;
                    }
                    left -= v.len();
                    taken += v.len();
                    msgs.extend(batch.push(v));
                    taken < room
                });
                snap.after = after;
                snap.left = left;
                if !matches!(read, Ok(false)) || left == 0 {
                    // Done (or failed: the peer asks for what it still lacks).
                    link.snapshot = None;
                }
                read.map(|_| ())
            } else {
                let n = link.outbox.len().min(CHUNK);
                let chunk: Vec<ValueHash> = link.outbox.drain(..n).collect();
                let read = self.store.read_blobs(&chunk, |_, v| {
                    taken += v.len();
                    msgs.extend(batch.push(v));
                    taken < room
                });
                // On an error the peer asks again for what it still lacks.
                let passed = *read.as_ref().unwrap_or(&n);
                for h in &chunk[..passed] {
                    link.outboxed.remove(h);
                }
                // What was not looked at goes back to the front, in order.
                for h in chunk[passed..].iter().rev() {
                    link.outbox.push_front(*h);
                }
                read.map(|_| ())
            };
            if let Err(e) = read {
                warn!("cannot read values to send to a peer: {e}");
            }
            msgs.extend(batch.finish());
            self.work += taken as u64;
            for m in msgs {
                self.send(peer, m, false);
            }
        }
    }

    fn ask_pending(&mut self, peer: NodeBytes) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let asked = &mut self.asked;
        asked.retain(|h, _| self.pending.contains_key(h));
        let hashes: Vec<ValueHash> = self
            .pending
            .keys()
            .filter(|h| {
                asked
                    .get(*h)
                    .is_none_or(|t| now.duration_since(*t) >= REASK_AFTER)
            })
            .copied()
            .collect();
        for h in &hashes {
            asked.insert(*h, now);
        }
        // In hash order, the peer reads its values table sequentially.
        let mut hashes = hashes;
        hashes.sort_unstable();
        for chunk in hashes.chunks(MAX_WANT) {
            self.send(
                peer,
                DataMsg::Want {
                    hashes: chunk.to_vec(),
                },
                false,
            );
        }
    }

    /// Queues a message for a peer. A push that does not fit is dropped: the next sync round
    /// carries it. Anything else that does not fit means the peer is hopelessly behind, and its
    /// connection is reset (it resyncs from its persisted state on reconnect).
    fn send(&mut self, peer: NodeBytes, msg: DataMsg, droppable: bool) {
        let Some(link) = self.peers.get(&peer) else {
            return;
        };
        // Counted before the writer can see it (see `outflow`).
        link.tx.flow.queue(&msg);
        #[cfg(test)]
        self.view
            .max_queued_values
            .fetch_max(link.tx.flow.queued(), std::sync::atomic::Ordering::Relaxed);
        let err = match link.tx.tx.try_send(msg) {
            Ok(()) => return,
            Err(e) => e,
        };
        let full = matches!(err, mpsc::error::TrySendError::Full(_));
        link.tx.flow.unqueue(&err.into_inner());
        if full && droppable {
            debug!("push to slow peer dropped; sync will carry it");
            return;
        }
        if let Some(link) = self.peers.remove(&peer) {
            self.saved_sync.insert(peer, link.sync.persisted());
        }
        if full {
            let _ = self
                .misbehaved
                .send((peer, "peer does not keep up with its send queue".into()));
        }
    }

    /// Gives memory back after a burst of work, once the replica is idle. A catch-up or a bulk
    /// load leaves SQLite's page caches full and, with glibc, megabytes of freed heap that the
    /// allocator keeps (BENCHMARKS.md, W8: 40% of a node's RSS after loading 100k keys). The
    /// trim costs a few milliseconds and runs at most once per `RELEASE_AFTER_BYTES` of work.
    fn release_memory(&mut self) {
        self.store.release_memory();
        self.view
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release_memory();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory of glibc's heaps to the kernel; it takes
        // the allocator's own locks and is safe to call from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
        debug!(work = self.work, "released idle memory");
    }

    /// Disconnects peers that sent something malformed and reports them to the node task.
    fn drop_misbehaving(&mut self, bad: Vec<(NodeBytes, String)>) {
        for (peer, reason) in bad {
            self.peers.remove(&peer);
            self.coord.peer_down(&peer);
            let _ = self.misbehaved.send((peer, reason));
        }
    }

    /// Ends a batch whose changes could not be made durable: reloads the document from the
    /// store and answers every caller with the error. Returns true when the replica must stop.
    fn fail_batch(&mut self, fx: Effects, e: &Error) -> bool {
        self.reload_document(e);
        self.drop_misbehaving(fx.bad);
        for a in fx.acks {
            let _ = a.send(Err(clone_err(e)));
        }
        for (_, a) in fx.terms {
            let _ = a.send(Err(clone_err(e)));
        }
        for a in fx.compact {
            let _ = a.send(Err(clone_err(e)));
        }
        if let Some(s) = fx.shutdown {
            let _ = s.send(());
            return true;
        }
        false
    }

    /// Reports a failed commit to subscribers, once per run of failures (see
    /// [`Event::StorageFailed`]).
    fn storage_failed(&mut self, e: &Error) {
        if !self.storage_failing {
            self.storage_failing = true;
            let _ = self.events.send(Event::StorageFailed {
                error: e.to_string(),
            });
        }
    }

    /// A commit succeeded: ends a run of failures ([`Event::StorageRecovered`]).
    fn storage_works(&mut self) {
        if self.storage_failing {
            self.storage_failing = false;
            let _ = self.events.send(Event::StorageRecovered);
        }
    }

    /// Whether the in-memory document must not be used (see [`Replica::stale`]).
    fn doc_unusable(&self) -> bool {
        self.stale || self.doc.is_broken()
    }

    /// After a failed commit the in-memory document may hold changes that are not on disk:
    /// reload it from the database, which is the truth, and resynchronise with every peer.
    ///
    /// Reloading alone is not enough. The changes that did not commit were received (pushed,
    /// or sent by a sync round) and are now gone from this replica, but both sync states
    /// still count them as delivered: ours may list them among the heads we share, and the
    /// sender's automerge state remembers having sent them and never sends them again. Left
    /// so, the replica would stop applying that peer's changes for good (every later change
    /// depends on the lost ones), with every link still up. So both sides start afresh: our
    /// states for every peer, the persisted ones reread from the store, and each peer is told
    /// (`DataMsg::Resync`) to do the same and to sync with us at once.
    ///
    /// If the store cannot even be read, the replica is marked [`Replica::stale`] and tries
    /// again at the start of every batch; until then it refuses writes and peers' changes.
    fn reload_document(&mut self, cause: impl std::fmt::Display) {
        // Pending keys recorded against the in-memory document must be looked up again.
        self.doc_gen += 1;
        let reloaded = self.store.load_doc().and_then(|stored| {
            KvDoc::load(
                stored.snapshot.as_deref(),
                &stored.changes,
                &self.me,
                &self.coord.epoch(),
            )
            .map_err(|le| self.store.corrupt(le))
        });
        #[cfg(test)]
        let reloaded = reloaded.and_then(|d| match reload_fault::injected(&self.me) {
            true => Err(Error::Storage("injected: the store cannot be read".into())),
            false => Ok(d),
        });
        let doc = match reloaded {
            Ok(doc) => doc,
            Err(le) => {
                if !self.stale {
                    warn!("reload after a failed commit ({cause}) failed, will retry: {le}");
                }
                self.stale = true;
                return;
            }
        };
        warn!("recovered from a failed commit ({cause}): reloaded the stored document, resyncing with every peer");
        self.doc = doc;
        self.stale = false;
        match self.store.peer_sync_states() {
            Ok(states) => self.saved_sync = states.into_iter().collect(),
            Err(_) => self.saved_sync.clear(),
        }
        for link in self.peers.values_mut() {
            link.sync = PeerSync::new(None);
            link.values_pushed = false;
        }
        let peers: Vec<NodeBytes> = self.peers.keys().copied().collect();
        for peer in peers {
            self.send(peer, DataMsg::Resync, false);
            self.poll_peer(peer);
        }
    }

    fn persist_all_sync(&mut self) -> Result<()> {
        let tx = self.store.tx()?;
        for (peer, link) in &self.peers {
            tx.set_peer_sync(peer, &link.sync.persisted())?;
        }
        tx.commit()
    }
}

fn clone_err(e: &Error) -> Error {
    // Not `Error::Storage(e.to_string())`: that said "storage error: storage error: ...".
    e.clone()
}

use crate::ids::node_id_string;

/// Test hook: holds a node's next whole-document load at a gate, so that a test can act while
/// it is in progress.
#[cfg(test)]
pub(crate) mod load_gate {
    use std::{
        collections::HashMap,
        sync::{mpsc, Mutex},
    };

    use crate::doc::NodeBytes;

    struct Gate {
        arrived: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
    }

    static GATES: Mutex<Option<HashMap<NodeBytes, Gate>>> = Mutex::new(None);

    /// Installs a gate for `node`'s next load: the first receiver hears when the load reaches
    /// it, and the load goes on once the sender sends (or is dropped).
    pub(crate) fn install(node: NodeBytes) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (arrived, arrived_rx) = mpsc::channel();
        let (release_tx, release) = mpsc::channel();
        GATES
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(node, Gate { arrived, release });
        (arrived_rx, release_tx)
    }

    /// Waits at `node`'s gate, if it has one.
    pub(super) fn pass(node: &NodeBytes) {
        let gate = GATES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|g| g.remove(node));
        if let Some(g) = gate {
            let _ = g.arrived.send(());
            let _ = g.release.recv();
        }
    }

    /// Waits (off the async runtime) until a load reached the gate.
    pub(crate) async fn arrival(arrived: mpsc::Receiver<()>) {
        tokio::task::spawn_blocking(move || {
            arrived
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the whole document never started loading")
        })
        .await
        .unwrap();
    }
}

/// Test hook: makes a node's reloads of its document after a failed commit fail, as when the
/// store cannot even be read, so that tests reach [`Replica::stale`].
#[cfg(test)]
pub(crate) mod reload_fault {
    use std::{collections::HashSet, sync::Mutex};

    use crate::doc::NodeBytes;

    static FAILING: Mutex<Option<HashSet<NodeBytes>>> = Mutex::new(None);

    /// Sets whether `node`'s reloads fail.
    pub(crate) fn set(node: NodeBytes, failing: bool) {
        let mut g = FAILING.lock().unwrap_or_else(|p| p.into_inner());
        let set = g.get_or_insert_with(HashSet::new);
        if failing {
            set.insert(node);
        } else {
            set.remove(&node);
        }
    }

    pub(super) fn injected(node: &NodeBytes) -> bool {
        FAILING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| s.contains(node))
    }
}

#[cfg(test)]
mod fault_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{test_node, Swarm};

    async fn node(dir: &std::path::Path, peers: &[String]) -> Swarm {
        test_node(dir, "replica-tests", peers).await
    }

    /// A replica in `dir`, driven by hand with `process` (no thread, no network); keep the
    /// receiver: the replica's own queue.
    fn replica_in(
        dir: &std::path::Path,
    ) -> (super::Replica, tokio::sync::mpsc::Receiver<super::Command>) {
        use std::sync::Arc;
        use tokio::sync::{broadcast, mpsc};
        let (own_tx, own_rx) = mpsc::channel(16);
        let (misbehaved, _) = mpsc::unbounded_channel();
        let cfg = super::ReplicaConfig {
            dir: dir.to_path_buf(),
            durability: crate::Durability::Process,
            events: broadcast::channel(16).0,
            misbehaved,
            policy: Default::default(),
            clocks: Arc::new(crate::clock::Clocks::new(Default::default(), 0)),
        };
        let (replica, _) = super::Replica::open(cfg, own_tx.downgrade()).unwrap();
        (replica, own_rx)
    }

    /// A batch with a peer's change between two local writes: automerge closes the local
    /// transaction at the peer's change, so the writes make two changes. Both are pushed (in
    /// one message): a peer that got only the second would hold it back as a gap until a sync
    /// round brought the first.
    #[test]
    fn every_local_change_of_a_batch_is_pushed_when_a_peers_change_splits_them() {
        use super::{Command, DataMsg, WriteOp};
        use crate::doc::{value_hash, KvDoc};
        use crate::history::EpochId;
        use std::sync::Arc;
        use tokio::sync::{oneshot, Semaphore};

        let dir = tempfile::tempdir().unwrap();
        let (mut a, _own_rx) = replica_in(dir.path());
        let b: super::NodeBytes = [0xBB; 32];
        let budget = Arc::new(Semaphore::new(1 << 20));
        let from_b = |msg| Command::FromPeer {
            peer: b,
            conn_id: 1,
            msg,
            _permit: budget.clone().try_acquire_owned().unwrap(),
        };
        let write = |key: &str, value: &[u8]| {
            let (reply, _) = oneshot::channel();
            Command::Write {
                ops: vec![WriteOp::Put {
                    key: key.into(),
                    value: value.to_vec(),
                }],
                reply,
            }
        };
        // B connects and is in the same epoch.
        let (to_b, mut sent_to_b, _) = super::DataTx::channel(64);
        a.process(vec![
            Command::PeerUp {
                peer: b,
                conn_id: 1,
                tx: to_b,
            },
            from_b(DataMsg::Epoch {
                epoch: EpochId::ZERO,
            }),
        ]);
        // B's own write, pushed to A between two of A's writes.
        let mut b_doc = KvDoc::new(&b);
        b_doc.put("from-b", &value_hash(b"vb"), 1).unwrap();
        let b_change = b_doc.commit().unwrap();
        a.process(vec![
            write("a1", b"v1"),
            from_b(DataMsg::Push {
                epoch: EpochId::ZERO,
                changes: vec![b_change.raw_bytes().to_vec()],
                values: vec![b"vb".to_vec()],
            }),
            write("a2", b"v2"),
        ]);
        let mut pushed = Vec::new();
        while let Ok(msg) = sent_to_b.try_recv() {
            if let DataMsg::Push { changes, .. } = msg {
                pushed.extend(changes);
            }
        }
        assert_eq!(
            pushed.len(),
            2,
            "both parts of the batch's writes are pushed"
        );
        let changes = pushed
            .into_iter()
            .map(|c| automerge::Change::from_bytes(c).unwrap())
            .collect();
        b_doc.apply_changes(changes).unwrap();
        assert!(!b_doc.has_missing_deps(), "B holds nothing back");
        for key in ["a1", "a2", "from-b"] {
            assert!(b_doc.get(key).is_some(), "{key} is on B");
        }
    }

    /// A newer epoch being fetched from a peer whose connection is replaced (a restarted node's
    /// dial crossing its peer's) is fetched again over the new connection. Before, the fetch's
    /// sync state waited for an answer lost with the old connection, for good: the netns suite's
    /// restarted nodes sometimes never converged.
    #[test]
    fn a_fetch_of_a_newer_epoch_restarts_on_a_replacing_connection() {
        use super::{Command, DataMsg};
        use crate::history::EpochId;
        use std::sync::Arc;
        use tokio::sync::{mpsc, Semaphore};

        let dir = tempfile::tempdir().unwrap();
        let (mut a, _own_rx) = replica_in(dir.path());
        let b: super::NodeBytes = [0xBB; 32];
        let newer = EpochId::ZERO.next(5, b);
        let budget = Arc::new(Semaphore::new(1 << 20));
        let from_b = |conn_id, msg| Command::FromPeer {
            peer: b,
            conn_id,
            msg,
            _permit: budget.clone().try_acquire_owned().unwrap(),
        };
        let fetch_msgs = |rx: &mut mpsc::Receiver<DataMsg>| {
            let mut n = 0;
            while let Ok(m) = rx.try_recv() {
                if matches!(m, DataMsg::Sync { epoch, .. } if epoch == newer) {
                    n += 1;
                }
            }
            n
        };
        // B connects and says it is in a newer epoch: A fetches it from B.
        let (to_b1, mut sent1, _) = super::DataTx::channel(64);
        a.process(vec![
            Command::PeerUp {
                peer: b,
                conn_id: 1,
                tx: to_b1,
            },
            from_b(1, DataMsg::Epoch { epoch: newer }),
        ]);
        assert!(fetch_msgs(&mut sent1) > 0, "the fetch started");
        // The answer is lost with connection 1, which a new one replaces.
        let (to_b2, mut sent2, _) = super::DataTx::channel(64);
        a.process(vec![
            Command::PeerUp {
                peer: b,
                conn_id: 2,
                tx: to_b2,
            },
            Command::Tick,
        ]);
        assert!(
            fetch_msgs(&mut sent2) > 0,
            "the fetch goes on over the new connection"
        );
    }

    #[test]
    fn a_key_waits_once_per_value_however_often_it_is_recorded() {
        use super::{Entry, Pending, PENDING_INDEX_FROM};
        use std::collections::HashMap;
        let entry = |hlc| Entry {
            hash: [7; 16],
            hlc,
            origin: [1; 32],
        };
        let mut pending = HashMap::new();
        // Few keys (a linear search), then many sharing the value (an index): every rescan
        // records each key again, with its newest entry.
        let n = PENDING_INDEX_FROM * 3;
        for round in 0..3u64 {
            for i in 0..n {
                Pending::add(&mut pending, [7; 16], format!("k{i}"), entry(round), round);
            }
        }
        let p = &pending[&[7; 16]];
        assert_eq!(p.keys.len(), n);
        assert!(
            p.keys.iter().all(|(_, e)| e.hlc == 2),
            "the newest record wins"
        );
        assert_eq!(p.since, 0, "the oldest generation is kept");
        let mut keys: Vec<_> = p.keys.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    /// A snapshot transfer pushes at most `MAX_PUSHED_VALUES` (64 KiB in unit tests) unasked;
    /// a joining node gets the rest by asking, and ends with every value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_beyond_the_push_limit_are_fetched_by_asking() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = node(da.path(), &[]).await;
        let value = |i: usize| vec![(i % 251) as u8; 1000];
        for i in 0..300 {
            a.put(&format!("k{i:03}"), value(i)).await.unwrap();
        }
        const { assert!(300 * 1000 > 4 * super::MAX_PUSHED_VALUES) };
        let b = node(db.path(), &[a.ticket()]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        'all: loop {
            for i in 0..300 {
                if b.get(&format!("k{i:03}")).await.unwrap() != Some(value(i)) {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "k{i:03} never arrived"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'all;
                }
            }
            break;
        }
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    }
    pub(super) fn node_bytes(s: &Swarm) -> super::NodeBytes {
        *crate::net::ticket::parse(&s.ticket())
            .unwrap()
            .id
            .as_bytes()
    }

    async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !cond().await {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A node joining with an empty store loads the whole document on another thread: the
    /// values pushed behind it are stored meanwhile, a local write waits for the load and is
    /// then made on top of the loaded document, and nothing is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_stores_values_during_the_load_and_writes_wait_for_it() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let n = 500;
        let value = |i: usize| format!("value-{i}").into_bytes();
        let a = node(da.path(), &[]).await;
        for i in 0..n {
            a.put(&format!("k{i:04}"), value(i)).await.unwrap();
        }
        a.shutdown().await.unwrap();

        let b = node(db.path(), &[]).await;
        let (arrived, release) = super::load_gate::install(node_bytes(&b));
        let a = node(da.path(), &[b.ticket()]).await;
        super::load_gate::arrival(arrived).await;

        // The document is held at the gate; the values behind it reach B's store anyway.
        let db_file = db.path().join("murmur.sqlite3");
        until("the values were not stored during the load", async || {
            let conn = rusqlite::Connection::open_with_flags(
                &db_file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let stored: i64 = conn
                .query_row("SELECT count(*) FROM vals", [], |r| r.get(0))
                .unwrap();
            stored == n as i64
        })
        .await;
        assert_eq!(
            b.len().await.unwrap(),
            0,
            "nothing is visible before the load"
        );
        let write = tokio::spawn({
            let b = b.clone();
            async move { b.put("mine", b"mine").await }
        });
        release.send(()).unwrap();
        write.await.unwrap().unwrap();

        until("B never had every key", async || {
            b.len().await.unwrap() == n + 1
        })
        .await;
        for i in 0..n {
            assert_eq!(b.get(&format!("k{i:04}")).await.unwrap(), Some(value(i)));
        }
        until("B's write never reached A", async || {
            a.get("mine").await.unwrap().is_some()
        })
        .await;
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
        let b = node(db.path(), &[]).await;
        assert_eq!(b.len().await.unwrap(), n + 1, "all of it is durable");
        b.shutdown().await.unwrap();
    }
}
