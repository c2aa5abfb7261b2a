//! The automerge document as a key-value map.
//!
//! The document maps each key to an [`Entry`]: a 16-byte hash of its value and the hybrid
//! logical clock ([`hlc`]) of the write, as one 24-byte `ScalarValue::Bytes`; never to the value
//! itself. A deletion is an entry too (a *tombstone*, with the all-zero hash), so that every
//! write, deletions included, carries its time. Concurrent writes that automerge keeps as a
//! conflict resolve to the entry with the greatest `(hlc, hash)`: the same rule decides between
//! two replicas' states after a history compaction ([`crate::history`]), where there is no
//! shared history left to compare. The value itself is never in the document: the value bytes
//! live in the store's `vals` table and travel beside the changes. Keeping the document small
//! matters because a document loaded from disk (or received whole over sync) makes every later
//! write cost time proportional to the bytes of all values in it (measured: 3 ms per put at
//! 100k keys of 100 bytes, against 23 µs when built in memory).
//!
//! **Buckets.** Keys are not put in the root map itself but spread over [`BUCKETS`] maps under
//! it, by a hash of the key ([`bucket_of`]). Automerge 0.12 applies a peer's change by walking
//! every operation of each object the change touches: with one flat map, one remote put cost
//! time linear in the number of keys (measured: 0.42 ms at 1k keys, 22.6 ms at 100k), which made
//! replication slow down as data grew. A bucket holds 1/1024 of the keys (0.06 ms at 100k). The
//! price is a document about 2× slower to load and save (BENCHMARKS.md).
//!
//! The buckets are made by the epoch's **genesis** change, whose actor is the epoch's
//! [`EpochId::genesis_actor`]: the same bytes on every replica, so every replica refers to the
//! same bucket objects (`(counter i + 1, genesis actor)`) and concurrent writers never create
//! competing maps. A later epoch's genesis also holds the carried entries ([`KvDoc::genesis`]);
//! epoch zero's holds only the buckets and is added on the first local write (an empty replica
//! stays empty, so that it can receive a whole document, see [`crate::sync`]).
//!
//! Each process start uses a fresh automerge actor: the node's 32-byte ID followed by 8 random
//! bytes. The random part means a change lost in a crash can never collide with a later one on
//! the same `(actor, seq)`; the ID part tells every replica which node wrote an operation (the
//! `origin` of events).

pub(crate) mod hlc;

use std::collections::HashSet;
use std::sync::OnceLock;

use automerge::{
    legacy::{ObjectId as LegacyObj, OpId as LegacyOpId, OpType},
    sync::{self, SyncDoc},
    transaction::{CommitOptions, Transactable},
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT,
};

use crate::ids::EpochId;

/// How many maps the keys are spread over (see the module docs). Part of the storage and wire
/// format: changing it changes every document.
pub(crate) const BUCKETS: usize = 1024;

/// The bucket of `key`: FNV-1a of its bytes. Stable forever (part of the format); not keyed,
/// since a writer who makes many keys share a bucket only slows their own swarm to the speed of
/// a flat map.
pub(crate) fn bucket_of(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

/// The root-map key under which bucket `i` hangs (only for inspection: replicas find buckets by
/// their object id).
fn bucket_name(i: usize) -> String {
    format!("{i:03x}")
}

pub(crate) use crate::ids::{value_hash, NodeBytes, ValueHash};

/// The node that created an actor, if the actor was made by Murmur.
pub(crate) fn actor_origin(actor: &ActorId) -> Option<NodeBytes> {
    actor.to_bytes().get(..32)?.try_into().ok()
}

/// The hash that marks a deletion (no value hashes to it in practice: it is a BLAKE3 prefix of
/// all zeros).
pub(crate) const TOMBSTONE: ValueHash = [0; 16];

/// Bytes of an entry in the document: the value hash, then the write's clock (big endian).
const ENTRY_LEN: usize = 24;

/// A key's state as the document resolves it: a value, or a deletion (a tombstone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Hash of the value; [`TOMBSTONE`] for a deletion.
    pub hash: ValueHash,
    /// Hybrid logical clock of the write.
    pub hlc: u64,
    /// The node whose actor wrote the entry into this document (for an entry carried across
    /// a history compaction, the node that carried it).
    pub origin: NodeBytes,
}

impl Entry {
    /// Whether this entry is a deletion.
    pub fn is_tombstone(&self) -> bool {
        self.hash == TOMBSTONE
    }

    /// The order that decides between concurrent entries: later clock wins, then greater hash.
    /// The origin is not part of it (two nodes carrying the same write are the same write).
    pub fn rank(&self) -> (u64, ValueHash) {
        (self.hlc, self.hash)
    }

    fn encode(hash: &ValueHash, hlc: u64) -> ScalarValue {
        let mut b = Vec::with_capacity(ENTRY_LEN);
        b.extend_from_slice(hash);
        b.extend_from_slice(&hlc.to_be_bytes());
        ScalarValue::Bytes(b)
    }
}

/// Decodes an entry's bytes: `(hash, hlc)`.
fn decode_entry(b: &[u8]) -> Option<(ValueHash, u64)> {
    if b.len() != ENTRY_LEN {
        return None;
    }
    let hash = ValueHash::try_from(&b[..16]).ok()?;
    let hlc = u64::from_be_bytes(b[16..].try_into().ok()?);
    Some((hash, hlc))
}

/// The replicated map.
pub(crate) struct KvDoc {
    doc: AutoCommit,
    /// The actor of this epoch's genesis change, which made the buckets.
    genesis: ActorId,
    /// The buckets' object ids: `(i + 1, genesis actor)`, whether or not the genesis is in the
    /// document yet.
    buckets: Vec<ObjId>,
    /// Epoch zero: a missing genesis is added here, on the first local write.
    lazy_genesis: bool,
    /// Automerge panicked on a peer's input (see [`KvDoc::is_broken`]).
    broken: bool,
}

impl KvDoc {
    fn actor_for(node: &NodeBytes) -> ActorId {
        let mut a = node.to_vec();
        a.extend_from_slice(&rand::random::<[u8; 8]>());
        ActorId::from(a)
    }

    fn with_doc(doc: AutoCommit, epoch: &EpochId) -> Self {
        let genesis = ActorId::from(epoch.genesis_actor());
        let buckets = (0..BUCKETS)
            .map(|i| ObjId::Id(i as u64 + 1, genesis.clone(), 0))
            .collect();
        KvDoc {
            doc,
            genesis,
            buckets,
            lazy_genesis: *epoch == EpochId::ZERO,
            broken: false,
        }
    }

    /// An empty document of epoch zero written by `node`.
    #[cfg(test)]
    pub fn new(node: &NodeBytes) -> Self {
        Self::empty(node, &EpochId::ZERO)
    }

    /// Rebuilds the document of `epoch` from a snapshot and the change rows saved after it.
    pub fn load(
        snapshot: Option<&[u8]>,
        changes: &[Vec<u8>],
        node: &NodeBytes,
        epoch: &EpochId,
    ) -> Result<Self, String> {
        let mut doc = match snapshot {
            Some(s) => AutoCommit::load(s).map_err(|e| format!("snapshot: {e}"))?,
            None => AutoCommit::new(),
        };
        if !changes.is_empty() {
            let parsed = changes
                .iter()
                .map(|c| Change::from_bytes(c.clone()).map_err(|e| format!("change row: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            doc.apply_changes(parsed)
                .map_err(|e| format!("applying change rows: {e}"))?;
        }
        doc.set_actor(Self::actor_for(node));
        Ok(Self::with_doc(doc, epoch))
    }

    /// The genesis of `epoch`: one change by the epoch's genesis actor that makes the buckets
    /// and puts exactly `entries`, in key order, at time 0, so that any two replicas building it
    /// from the same entries get the same change hash. Later writes use a fresh actor of `node`.
    pub fn genesis(
        epoch: &EpochId,
        entries: &[(String, Entry)],
        node: &NodeBytes,
    ) -> Result<Self, automerge::AutomergeError> {
        let mut doc = Self::genesis_doc(epoch, entries)?;
        doc.set_actor(Self::actor_for(node));
        Ok(Self::with_doc(doc, epoch))
    }

    fn genesis_doc(
        epoch: &EpochId,
        entries: &[(String, Entry)],
    ) -> Result<AutoCommit, automerge::AutomergeError> {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(epoch.genesis_actor()));
        let mut buckets = Vec::with_capacity(BUCKETS);
        for i in 0..BUCKETS {
            buckets.push(doc.put_object(ROOT, bucket_name(i), ObjType::Map)?);
        }
        let mut sorted: Vec<&(String, Entry)> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, e) in sorted {
            doc.put(
                &buckets[bucket_of(k)],
                k.as_str(),
                Entry::encode(&e.hash, e.hlc),
            )?;
        }
        doc.commit_with(CommitOptions::default().with_time(0));
        Ok(doc)
    }

    /// Epoch zero's genesis change (buckets only), made once per process.
    fn zero_genesis() -> Option<Change> {
        static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
        let bytes = BYTES.get_or_init(|| {
            let mut doc = Self::genesis_doc(&EpochId::ZERO, &[]).ok()?;
            Some(doc.get_last_local_change()?.raw_bytes().to_vec())
        });
        Change::from_bytes(bytes.clone()?).ok()
    }

    /// Whether the buckets exist in this document (its genesis is in it).
    fn has_buckets(&self) -> bool {
        self.doc.object_type(&self.buckets[0]) == Ok(ObjType::Map)
    }

    /// Adds epoch zero's genesis if it is missing, before a local write or before changes that
    /// build on it (which would otherwise wait for it to come over sync).
    fn ensure_genesis(&mut self) -> Result<(), automerge::AutomergeError> {
        if !self.lazy_genesis || self.has_buckets() {
            return Ok(());
        }
        match Self::zero_genesis() {
            Some(g) => self.doc.apply_changes([g]),
            None => Err(automerge::AutomergeError::Fail),
        }
    }

    /// An empty document of `epoch` (to receive an epoch's document over sync, or a new store).
    pub fn empty(node: &NodeBytes, epoch: &EpochId) -> Self {
        Self::with_doc(AutoCommit::new().with_actor(Self::actor_for(node)), epoch)
    }

    /// The bucket object of `key`.
    fn bucket(&self, key: &str) -> &ObjId {
        &self.buckets[bucket_of(key)]
    }

    /// Whether a change's operation target is one of this document's buckets, and its key
    /// belongs there.
    fn in_bucket(&self, obj: &LegacyObj, key: &str) -> bool {
        match obj {
            LegacyObj::Id(LegacyOpId(ctr, actor)) => {
                *actor == self.genesis && *ctr == bucket_of(key) as u64 + 1
            }
            LegacyObj::Root => false,
        }
    }

    /// Sets `key` to the value with hash `hash`, written at clock `hlc` (in the open
    /// transaction).
    pub fn put(
        &mut self,
        key: &str,
        hash: &ValueHash,
        hlc: u64,
    ) -> Result<(), automerge::AutomergeError> {
        self.ensure_genesis()?;
        let b = self.bucket(key).clone();
        self.doc.put(&b, key, Entry::encode(hash, hlc))
    }

    /// Deletes `key` at clock `hlc` by writing a tombstone (in the open transaction). Deleting
    /// a key that holds no value changes nothing.
    pub fn delete(&mut self, key: &str, hlc: u64) -> Result<(), automerge::AutomergeError> {
        if self.get(key).is_some() {
            self.put(key, &TOMBSTONE, hlc)?;
        }
        Ok(())
    }

    /// Writes `entry` as it is (hash and clock), to carry it from another epoch's document.
    pub fn put_entry(&mut self, key: &str, entry: &Entry) -> Result<(), automerge::AutomergeError> {
        self.put(key, &entry.hash, entry.hlc)
    }

    /// Whether this replica made `change` (since it was loaded: every load takes a new actor).
    pub fn is_own(&self, change: &Change) -> bool {
        change.actor_id() == self.doc.get_actor()
    }

    /// Commits the open transaction; returns the change it made, if any. (Tests and fuzz
    /// targets; the replica uses [`KvDoc::commit_pending`].)
    #[cfg(any(test, fuzzing))]
    pub fn commit(&mut self) -> Option<Change> {
        self.commit_pending()?;
        self.doc.get_last_local_change()
    }

    /// Commits the open transaction, if it holds anything, without reading the change back
    /// (the replica takes a batch's changes from [`KvDoc::changes_since`]). Returns whether it
    /// made a change.
    pub fn commit_pending(&mut self) -> Option<()> {
        // Automerge's commit opens a transaction first when none is open, which costs more than
        // applying a peer's change (measured: 140 µs on a replica that only receives).
        if self.doc.pending_ops() == 0 {
            return None;
        }
        self.doc.commit().map(|_| ())
    }

    /// The current value of `key`: its winning entry, unless that is a tombstone.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.winner(key).filter(|e| !e.is_tombstone())
    }

    /// The winning entry of `key`, tombstones included: the greatest [`Entry::rank`] among the
    /// values automerge holds for it (several when concurrent writes conflict).
    pub fn winner(&self, key: &str) -> Option<Entry> {
        let all = self.doc.get_all(self.bucket(key), key).ok()?;
        all.into_iter()
            .filter_map(|(v, id)| entry_of(v, &id))
            .max_by_key(|e| e.rank())
    }

    /// Every live key and its entry, in key order. (Tests and fuzz targets.)
    #[cfg(any(test, fuzzing))]
    pub fn entries(&self) -> Vec<(String, Entry)> {
        let mut all = self.all_entries();
        all.retain(|(_, e)| !e.is_tombstone());
        all
    }

    /// Every key's winning entry, tombstones included, in key order. One pass over each
    /// bucket: looking each key up instead cost most of a 100k-key reopen (BENCHMARKS.md, W5).
    /// Only a key whose values conflict is looked up again, to rank them. A key found in a
    /// bucket it does not belong to (no Murmur replica writes one) is not part of the map.
    pub fn all_entries(&self) -> Vec<(String, Entry)> {
        let mut out = Vec::new();
        for (i, b) in self.buckets.iter().enumerate() {
            out.extend(self.doc.map_range(b, ..).filter_map(|item| {
                if bucket_of(&item.key) != i {
                    return None;
                }
                let e = if item.conflict {
                    self.winner(&item.key)
                } else {
                    let id = item.id();
                    entry_of(item.value.into(), &id)
                };
                e.map(|e| (item.key.into_owned(), e))
            }));
        }
        // A stable sort finds the buckets' sorted runs and merges them.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of changes in the document (its history length).
    #[cfg(test)]
    pub fn change_count(&mut self) -> usize {
        self.doc.get_changes(&[]).len()
    }

    /// Whether the document has no changes at all.
    pub fn is_empty(&mut self) -> bool {
        self.doc.get_heads().is_empty()
    }

    /// Hashes of every value still visible in the document, conflicting ones included: the
    /// values a replica must keep (anything else may be garbage-collected).
    pub fn visible_hashes(&self) -> HashSet<ValueHash> {
        let mut out = HashSet::new();
        for k in self.buckets.iter().flat_map(|b| self.doc.keys(b)) {
            if let Ok(all) = self.doc.get_all(self.bucket(&k), k.as_str()) {
                for (v, id) in all {
                    if let Some(e) = entry_of(v, &id) {
                        if !e.is_tombstone() {
                            out.insert(e.hash);
                        }
                    }
                }
            }
        }
        out
    }

    /// Current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Applies changes from a peer. Changes whose dependencies are missing are queued by
    /// automerge until they arrive (see [`KvDoc::has_missing_deps`]).
    pub fn apply_changes(&mut self, changes: Vec<Change>) -> Result<(), String> {
        if self.lazy_genesis && !self.has_buckets() {
            // Changes written on top of epoch zero's genesis: add it here rather than wait for
            // it over sync (it is the same change on every replica).
            let zero = Self::zero_genesis().map(|g| g.hash());
            if changes
                .iter()
                .any(|c| zero.is_some_and(|z| c.deps().contains(&z)))
            {
                self.ensure_genesis().map_err(|e| e.to_string())?;
            }
        }
        self.guarded(|doc| doc.apply_changes(changes).map_err(|e| e.to_string()))
    }

    /// Runs automerge on a peer's input. Automerge 0.12 panics on some malformed changes (an
    /// operation naming an actor the change does not list: `unwrap`s in its change decoding and
    /// batch apply) instead of returning an error. The panic is caught and reported as an
    /// error, and the document is marked broken: it may be half-changed.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut AutoCommit) -> Result<T, String>,
    ) -> Result<T, String> {
        match catch_quietly(|| f(&mut self.doc)) {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err("malformed input: automerge could not apply it".into())
            }
        }
    }

    /// Whether automerge panicked on a peer's input since this document was loaded: it must
    /// not be used again (the replica reloads it from its store, the last durable state).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Changes in the document that are not ancestors of `heads` (what was added since).
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<Change> {
        self.doc.get_changes(heads)
    }

    /// Whether changes are waiting for dependencies this replica does not have.
    pub fn has_missing_deps(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// The whole document, compacted.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Generates the next automerge sync message for a peer, if there is anything to say.
    ///
    /// The flag says whether the message carries this whole document to a peer that has none
    /// (automerge sends `save()` bytes then): the caller sends the values along without waiting
    /// to be asked (see [`crate::sync`]).
    pub fn generate_sync_message(&mut self, state: &mut sync::State) -> Option<(Vec<u8>, bool)> {
        // Automerge returns nothing while its last message is unanswered and our heads have not
        // moved, but for a peer with an empty document it builds the whole document (`save()`,
        // 100+ ms at 100k keys) before finding that out: every poll during a snapshot transfer
        // paid for it (BENCHMARKS.md, W4). The same test, done first.
        if state.in_flight && state.have_responded && state.last_sent_heads == self.heads() {
            return None;
        }
        let msg = self.doc.sync().generate_sync_message(state)?;
        let peer_empty = state.their_heads.as_ref().is_some_and(|h| h.is_empty());
        let whole = peer_empty && single_document_chunk(&msg).is_some();
        Some((msg.encode(), whole))
    }

    /// Whether the encoded sync message `bytes` carries exactly one whole document (what
    /// automerge sends a peer whose document is empty). Malformed bytes are not.
    pub fn carries_whole_document(bytes: &[u8]) -> bool {
        sync::Message::decode(bytes).is_ok_and(|m| single_document_chunk(&m).is_some())
    }

    /// Applies an automerge sync message from a peer.
    ///
    /// When the message filled this empty document with a whole document (automerge sends
    /// `save()` bytes to a peer that has nothing), those bytes are returned: they are this
    /// document's snapshot as it stands, so the caller can store them as they are instead of
    /// extracting and storing every change.
    pub fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        let msg = sync::Message::decode(bytes).map_err(|e| format!("bad sync message: {e}"))?;
        let whole = if self.is_empty() {
            single_document_chunk(&msg).map(<[u8]>::to_vec)
        } else {
            None
        };
        self.guarded(|doc| {
            doc.sync()
                .receive_sync_message(state, msg)
                .map_err(|e| format!("sync message rejected: {e}"))
        })?;
        // Automerge loads a document chunk into an empty document as a whole; anything else
        // (nothing loaded) leaves nothing to keep.
        Ok(whole.filter(|_| !self.is_empty()))
    }
}

thread_local! {
    /// Set while automerge runs on a peer's input (see [`catch_quietly`]).
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into an error, without the panic message (and, with
/// `RUST_BACKTRACE` set, a backtrace costing hundreds of MB to symbolize) on stderr: a peer's
/// malformed change is reported as an error and a misbehaving peer. The process's panic hook
/// is wrapped once; panics anywhere else reach it unchanged.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static WRAP: std::sync::Once = std::sync::Once::new();
    WRAP.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r
}

/// The message's only chunk, if it is exactly one whole document (automerge storage chunk
/// type 0) rather than a list of changes.
///
/// "Exactly": automerge loads the first chunk of the bytes and ignores anything after it, but
/// these bytes become the stored snapshot, which a reopen loads strictly. Bytes with anything
/// after the chunk are not used as a snapshot (the changes are stored instead), so that
/// malformed input can never make the store fail to reopen.
fn single_document_chunk(msg: &sync::Message) -> Option<&[u8]> {
    // A storage chunk: 4 magic bytes, a 4-byte checksum, the chunk type, the data length as
    // unsigned LEB128, then the data.
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    const DOCUMENT: u8 = 0;
    if msg.changes.len() != 1 {
        return None;
    }
    let chunk = msg.changes.iter().next()?;
    if chunk.len() <= 9 || chunk[..4] != MAGIC || chunk[8] != DOCUMENT {
        return None;
    }
    let (mut len, mut shift, mut at) = (0u64, 0u32, 9);
    loop {
        let b = *chunk.get(at)?;
        len |= u64::from(b & 0x7f).checked_shl(shift)?;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    (u64::try_from(chunk.len() - at).ok()? == len).then_some(chunk)
}

fn entry_of(value: Value<'_>, id: &automerge::ObjId) -> Option<Entry> {
    let (hash, hlc) = match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Bytes(b) => decode_entry(b)?,
            _ => return None,
        },
        Value::Object(_) => return None,
    };
    let origin = match id {
        automerge::ObjId::Id(_, actor, _) => actor_origin(actor).unwrap_or([0; 32]),
        automerge::ObjId::Root => return None,
    };
    Some(Entry { hash, hlc, origin })
}

/// What one change did to the map: the keys it touched, and who made it.
pub(crate) struct ChangeSummary {
    /// The node that made the change (None for actors Murmur did not make).
    pub origin: Option<NodeBytes>,
    /// Keys the change put or deleted.
    pub keys: Vec<String>,
}

impl KvDoc {
    /// Hashes of the values a change puts into the map (tombstones excluded). For a change
    /// from a peer, call it after the change was applied: automerge's decoding panics on some
    /// malformed changes, which [`KvDoc::apply_changes`] turns into an error.
    pub fn put_hashes(&self, change: &Change) -> Vec<ValueHash> {
        // A change still waiting for its dependencies was not decoded by automerge yet.
        let Ok(expanded) = catch_quietly(|| change.decode()) else {
            return Vec::new();
        };
        expanded
            .operations
            .iter()
            .filter(|op| matches!(&op.key, automerge::legacy::Key::Map(k) if self.in_bucket(&op.obj, k)))
            .filter_map(|op| match &op.action {
                OpType::Put(ScalarValue::Bytes(b)) => decode_entry(b).map(|(h, _)| h),
                _ => None,
            })
            .filter(|h| *h != TOMBSTONE)
            .collect()
    }

    /// Decodes a change to find which keys it touched.
    pub fn summarize(&self, change: &Change) -> ChangeSummary {
        let expanded = change.decode();
        let mut keys = Vec::new();
        for op in &expanded.operations {
            let automerge::legacy::Key::Map(k) = &op.key else {
                continue;
            };
            if !self.in_bucket(&op.obj, k) {
                continue;
            }
            if matches!(op.action, OpType::Delete | OpType::Put(_)) {
                keys.push(k.to_string());
            }
        }
        ChangeSummary {
            origin: actor_origin(change.actor_id()),
            keys,
        }
    }
}

/// A change automerge 0.12 panics on (an operation naming an actor the change does not list),
/// found among single-byte corruptions of a valid change; it builds on epoch zero's genesis.
#[cfg(test)]
pub(crate) fn a_change_automerge_panics_on() -> Change {
    let mut a = KvDoc::new(&[1; 32]);
    a.put("k", &value_hash(b"1"), 1).unwrap();
    let good = a.commit().unwrap().raw_bytes().to_vec();
    for pos in 0..good.len() {
        for x in [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF] {
            let mut bad = good.clone();
            bad[pos] ^= x;
            let Ok(change) = Change::from_bytes(bad) else {
                continue;
            };
            let mut d = KvDoc::new(&[2; 32]);
            if d.apply_changes(vec![change.clone()]).is_err() && d.is_broken() {
                return change;
            }
        }
    }
    panic!(
        "no corruption made automerge panic: if automerge no longer panics on malformed \
         changes, the guard in KvDoc::guarded (and its tests) can go"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeBytes = [1; 32];
    const B: NodeBytes = [2; 32];

    #[test]
    fn put_get_delete_and_origin() {
        let mut d = KvDoc::new(&A);
        d.put("k", &value_hash(b"v"), 7).unwrap();
        let c = d.commit().expect("a change");
        let s = d.summarize(&c);
        assert_eq!(s.keys, vec!["k".to_string()]);
        assert_eq!(s.origin, Some(A));
        assert_eq!(
            d.get("k"),
            Some(Entry {
                hash: value_hash(b"v"),
                hlc: 7,
                origin: A
            })
        );
        d.delete("k", 8).unwrap();
        d.delete("absent", 9).unwrap();
        assert!(d.commit().is_some());
        assert_eq!(d.get("k"), None);
        assert!(
            d.winner("k").unwrap().is_tombstone(),
            "the deletion is kept"
        );
        assert!(d.entries().is_empty());
        assert_eq!(d.all_entries().len(), 1);
        // Deleting what is not there makes no change at all.
        d.delete("k", 10).unwrap();
        assert!(d.commit().is_none());
    }

    #[test]
    fn concurrent_puts_resolve_identically_on_both_sides() {
        let mut a = KvDoc::new(&A);
        let mut b = KvDoc::new(&B);
        a.put("k", &value_hash(b"a"), 20).unwrap();
        let ca = a.commit().unwrap();
        b.put("k", &value_hash(b"b"), 10).unwrap();
        let cb = b.commit().unwrap();
        a.apply_changes(vec![cb]).unwrap();
        b.apply_changes(vec![ca]).unwrap();
        assert_eq!(a.get("k"), b.get("k"));
        assert_eq!(
            a.get("k").unwrap().hash,
            value_hash(b"a"),
            "the later clock wins, whatever automerge's own order"
        );
        assert_eq!(
            a.visible_hashes().len(),
            2,
            "both values are kept as a conflict"
        );
    }

    #[test]
    fn reload_from_snapshot_and_changes_gives_same_map() {
        let mut d = KvDoc::new(&A);
        d.put("a", &value_hash(b"1"), 1).unwrap();
        d.commit();
        let snap = d.save();
        d.put("b", &value_hash(b"2"), 2).unwrap();
        let c = d.commit().unwrap();
        let re = KvDoc::load(Some(&snap), &[c.raw_bytes().to_vec()], &A, &EpochId::ZERO).unwrap();
        assert_eq!(re.entries(), d.entries());
    }

    #[test]
    fn genesis_is_identical_for_identical_entries_whatever_the_history() {
        // Two replicas reach the same entries through different histories.
        let mut a = KvDoc::new(&A);
        let mut b = KvDoc::new(&B);
        for i in 0..50u64 {
            a.put("x", &value_hash(&i.to_be_bytes()), i).unwrap();
            a.commit();
        }
        a.put("y", &value_hash(b"y"), 60).unwrap();
        a.delete("x", 61).unwrap();
        a.commit();
        b.put("y", &value_hash(b"y"), 60).unwrap();
        b.put("x", &TOMBSTONE, 61).unwrap();
        b.commit();
        assert_eq!(a.all_entries().len(), 2);
        let strip = |v: Vec<(String, Entry)>| -> Vec<(String, ValueHash, u64)> {
            v.into_iter().map(|(k, e)| (k, e.hash, e.hlc)).collect()
        };
        assert_eq!(strip(a.all_entries()), strip(b.all_entries()));
        let epoch = EpochId::ZERO.next(1, A);
        let mut ga = KvDoc::genesis(&epoch, &a.all_entries(), &A).unwrap();
        let mut gb = KvDoc::genesis(&epoch, &b.all_entries(), &B).unwrap();
        assert_eq!(ga.heads(), gb.heads());
        assert_eq!(ga.change_count(), 1);
        assert!(ga.save().len() < a.save().len());
        // Writes after the genesis are made by the node's own actor.
        ga.put("z", &value_hash(b"z"), 70).unwrap();
        let c = ga.commit().unwrap();
        assert_eq!(ga.summarize(&c).origin, Some(A));
        gb.apply_changes(vec![c]).unwrap();
        assert_eq!(strip(ga.all_entries()), strip(gb.all_entries()));
    }

    #[test]
    fn keys_live_in_buckets_made_by_one_shared_genesis() {
        // Two replicas that never met each make epoch zero's genesis on their first write: the
        // same change, so their buckets are the same objects and their writes merge.
        let mut a = KvDoc::new(&A);
        let mut b = KvDoc::new(&B);
        assert!(
            a.is_empty(),
            "an unwritten replica stays empty (it can take a whole doc)"
        );
        a.put("x", &value_hash(b"1"), 1).unwrap();
        a.commit();
        b.put("y", &value_hash(b"2"), 2).unwrap();
        b.commit();
        let (ca, cb) = (a.changes_since(&[]), b.changes_since(&[]));
        assert_eq!(ca.len(), 2, "the genesis and the write");
        assert_eq!(ca[0].hash(), cb[0].hash(), "the same genesis on both");
        a.apply_changes(cb).unwrap();
        b.apply_changes(ca).unwrap();
        let keys = |d: &KvDoc| d.entries().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(&a), ["x", "y"]);
        assert_eq!(keys(&b), ["x", "y"]);
        // Nothing is put in the root map itself; "x" sits in its own bucket.
        assert_eq!(a.doc.length(ROOT), BUCKETS);
        let bucket = a
            .doc
            .get(ROOT, bucket_name(bucket_of("x")))
            .unwrap()
            .unwrap()
            .1;
        assert_eq!(a.doc.keys(&bucket).collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn a_change_built_on_the_genesis_is_applied_without_waiting_for_it() {
        let mut a = KvDoc::new(&A);
        a.put("x", &value_hash(b"1"), 1).unwrap();
        let c = a.commit().unwrap();
        let mut b = KvDoc::new(&B);
        b.apply_changes(vec![c]).unwrap();
        assert!(!b.has_missing_deps());
        assert_eq!(b.get("x").map(|e| e.hash), Some(value_hash(b"1")));
    }

    #[test]
    fn entries_outside_their_bucket_are_not_part_of_the_map() {
        // A peer that writes an entry into the root map, or into the wrong bucket, writes
        // nothing Murmur reads: not in the map, not in the change summary.
        let mut a = KvDoc::new(&A);
        a.put("k", &value_hash(b"1"), 1).unwrap();
        a.commit();
        let entry = Entry::encode(&value_hash(b"2"), 2);
        a.doc.put(ROOT, "flat", entry.clone()).unwrap();
        let wrong = (bucket_of("k") + 1) % BUCKETS;
        a.doc.put(a.buckets[wrong].clone(), "k", entry).unwrap();
        let c = a.commit().unwrap();
        assert!(a.summarize(&c).keys.is_empty());
        assert!(a.put_hashes(&c).is_empty());
        let keys: Vec<_> = a.entries().into_iter().map(|(k, e)| (k, e.hlc)).collect();
        assert_eq!(keys, [("k".to_string(), 1)]);
    }

    #[test]
    fn a_change_automerge_panics_on_is_an_error_and_marks_the_document() {
        let bad = a_change_automerge_panics_on();
        let mut d = KvDoc::new(&B);
        let e = d.apply_changes(vec![bad]).unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        assert!(d.is_broken());
    }

    #[test]
    fn garbage_snapshot_is_an_error_not_a_panic() {
        assert!(KvDoc::load(Some(&[1, 2, 3]), &[], &A, &EpochId::ZERO).is_err());
        assert!(KvDoc::load(None, &[vec![9; 40]], &A, &EpochId::ZERO).is_err());
    }
}
