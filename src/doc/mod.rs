//! The automerge document as a key-value map.
//!
//! The document maps each key to an [`Entry`]: a 16-byte hash of its value and the hybrid
//! logical clock ([`hlc`]) of the write, as one 24-byte `ScalarValue::Bytes`; never to the value
//! itself. A deletion is an entry too (a *tombstone*, with the all-zero hash), so that every
//! write, deletions included, carries its time. Concurrent writes that automerge keeps as a
//! conflict resolve to the entry with the greatest `(hlc, hash)`: the same rule decides between
//! two replicas' states after a history compaction ([`crate::history`]), where there is no
//! shared history left to compare. The value itself is never in the document: the value bytes live in the store's `blobs` table and travel beside the
//! changes. Keeping the document small matters because a document loaded from disk (or received
//! whole over sync) makes every later write cost time proportional to the bytes of all values in
//! it (measured: 3 ms per put at 100k keys of 100 bytes, against 23 µs when built in memory).
//!
//! Each process start uses a fresh automerge actor: the node's 32-byte ID followed by 8 random
//! bytes. The random part means a change lost in a crash can never collide with a later one on
//! the same `(actor, seq)`; the ID part tells every replica which node wrote an operation (the
//! `origin` of events).

pub(crate) mod hlc;

use std::collections::HashSet;

use automerge::{
    legacy::OpType,
    sync::{self, SyncDoc},
    transaction::{CommitOptions, Transactable},
    ActorId, AutoCommit, Change, ChangeHash, ReadDoc, ScalarValue, Value, ROOT,
};

/// The content address of a value: the first 16 bytes of its BLAKE3 hash.
pub(crate) type ValueHash = [u8; 16];

/// A node's 32-byte ID (its iroh endpoint public key).
pub(crate) type NodeBytes = [u8; 32];

/// Hashes a value.
pub(crate) fn value_hash(value: &[u8]) -> ValueHash {
    let full = blake3::hash(value);
    let mut h = [0u8; 16];
    h.copy_from_slice(&full.as_bytes()[..16]);
    h
}

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
}

impl KvDoc {
    fn actor_for(node: &NodeBytes) -> ActorId {
        let mut a = node.to_vec();
        a.extend_from_slice(&rand::random::<[u8; 8]>());
        ActorId::from(a)
    }

    /// An empty document written by `node`.
    #[cfg(test)]
    pub fn new(node: &NodeBytes) -> Self {
        KvDoc {
            doc: AutoCommit::new().with_actor(Self::actor_for(node)),
        }
    }

    /// Rebuilds the document from a snapshot and the change rows saved after it.
    pub fn load(
        snapshot: Option<&[u8]>,
        changes: &[Vec<u8>],
        node: &NodeBytes,
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
        Ok(KvDoc { doc })
    }

    /// A document that holds exactly `entries` and no history: one change with a fixed actor
    /// (`genesis_actor`), keys in sorted order and time 0, so that any two replicas building it
    /// from the same entries get the same change hash. Later writes use a fresh actor of `node`.
    pub fn genesis(
        genesis_actor: &[u8],
        entries: &[(String, Entry)],
        node: &NodeBytes,
    ) -> Result<Self, automerge::AutomergeError> {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(genesis_actor.to_vec()));
        let mut sorted: Vec<&(String, Entry)> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, e) in sorted {
            doc.put(ROOT, k.as_str(), Entry::encode(&e.hash, e.hlc))?;
        }
        doc.commit_with(CommitOptions::default().with_time(0));
        doc.set_actor(Self::actor_for(node));
        Ok(KvDoc { doc })
    }

    /// An empty document (to receive another epoch's document over sync).
    pub fn empty(node: &NodeBytes) -> Self {
        KvDoc {
            doc: AutoCommit::new().with_actor(Self::actor_for(node)),
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
        self.doc.put(ROOT, key, Entry::encode(hash, hlc))
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

    /// Commits the open transaction; returns the change it made, if any.
    pub fn commit(&mut self) -> Option<Change> {
        self.doc.commit()?;
        self.doc.get_last_local_change()
    }

    /// The current value of `key`: its winning entry, unless that is a tombstone.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.winner(key).filter(|e| !e.is_tombstone())
    }

    /// The winning entry of `key`, tombstones included: the greatest [`Entry::rank`] among the
    /// values automerge holds for it (several when concurrent writes conflict).
    pub fn winner(&self, key: &str) -> Option<Entry> {
        let all = self.doc.get_all(ROOT, key).ok()?;
        all.into_iter()
            .filter_map(|(v, id)| entry_of(v, &id))
            .max_by_key(|e| e.rank())
    }

    /// Every live key and its entry, in key order.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        let mut all = self.all_entries();
        all.retain(|(_, e)| !e.is_tombstone());
        all
    }

    /// Every key's winning entry, tombstones included, in key order. One pass over the map:
    /// looking each key up instead cost most of a 100k-key reopen (BENCHMARKS.md, W5). Only a
    /// key whose values conflict is looked up again, to rank them.
    pub fn all_entries(&self) -> Vec<(String, Entry)> {
        self.doc
            .map_range(ROOT, ..)
            .filter_map(|item| {
                let e = if item.conflict {
                    self.winner(&item.key)
                } else {
                    let id = item.id();
                    entry_of(item.value.into(), &id)
                };
                e.map(|e| (item.key.into_owned(), e))
            })
            .collect()
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
        for k in self.doc.keys(ROOT) {
            if let Ok(all) = self.doc.get_all(ROOT, k.as_str()) {
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
    pub fn apply_changes(&mut self, changes: Vec<Change>) -> Result<(), automerge::AutomergeError> {
        self.doc.apply_changes(changes)
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
        let msg = self.doc.sync().generate_sync_message(state)?;
        let peer_empty = state.their_heads.as_ref().is_some_and(|h| h.is_empty());
        let whole = peer_empty && single_document_chunk(&msg).is_some();
        Some((msg.encode(), whole))
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
        self.doc
            .sync()
            .receive_sync_message(state, msg)
            .map_err(|e| format!("sync message rejected: {e}"))?;
        // Automerge loads a document chunk into an empty document as a whole; anything else
        // (nothing loaded) leaves nothing to keep.
        Ok(whole.filter(|_| !self.is_empty()))
    }
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

/// What one change did to the map: the root keys it touched, and who made it.
pub(crate) struct ChangeSummary {
    /// The node that made the change (None for actors Murmur did not make).
    pub origin: Option<NodeBytes>,
    /// Root-map keys the change put or deleted.
    pub keys: Vec<String>,
    /// The greatest clock among its entries (0 if none).
    pub max_hlc: u64,
}

/// Hashes of the values a change puts at the root (tombstones excluded).
pub(crate) fn put_hashes(change: &Change) -> Vec<ValueHash> {
    change
        .decode()
        .operations
        .iter()
        .filter(|op| op.obj == automerge::legacy::ObjectId::Root)
        .filter_map(|op| match &op.action {
            OpType::Put(ScalarValue::Bytes(b)) => decode_entry(b).map(|(h, _)| h),
            _ => None,
        })
        .filter(|h| *h != TOMBSTONE)
        .collect()
}

/// Decodes a change to find which keys it touched.
pub(crate) fn summarize(change: &Change) -> ChangeSummary {
    let expanded = change.decode();
    let mut keys = Vec::new();
    let mut max_hlc = 0;
    for op in &expanded.operations {
        if op.obj != automerge::legacy::ObjectId::Root {
            continue;
        }
        let automerge::legacy::Key::Map(k) = &op.key else {
            continue;
        };
        if let OpType::Put(ScalarValue::Bytes(b)) = &op.action {
            if let Some((_, hlc)) = decode_entry(b) {
                max_hlc = max_hlc.max(hlc);
            }
        }
        if matches!(op.action, OpType::Delete | OpType::Put(_)) {
            keys.push(k.to_string());
        }
    }
    ChangeSummary {
        origin: actor_origin(change.actor_id()),
        keys,
        max_hlc,
    }
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
        let s = summarize(&c);
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
        assert_eq!(s.max_hlc, 7);
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
        let re = KvDoc::load(Some(&snap), &[c.raw_bytes().to_vec()], &A).unwrap();
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
        let mut ga = KvDoc::genesis(b"epoch-1", &a.all_entries(), &A).unwrap();
        let mut gb = KvDoc::genesis(b"epoch-1", &b.all_entries(), &B).unwrap();
        assert_eq!(ga.heads(), gb.heads());
        assert_eq!(ga.change_count(), 1);
        assert!(ga.save().len() < a.save().len());
        // Writes after the genesis are made by the node's own actor.
        ga.put("z", &value_hash(b"z"), 70).unwrap();
        let c = ga.commit().unwrap();
        assert_eq!(summarize(&c).origin, Some(A));
        gb.apply_changes(vec![c]).unwrap();
        assert_eq!(strip(ga.all_entries()), strip(gb.all_entries()));
    }

    #[test]
    fn garbage_snapshot_is_an_error_not_a_panic() {
        assert!(KvDoc::load(Some(&[1, 2, 3]), &[], &A).is_err());
        assert!(KvDoc::load(None, &[vec![9; 40]], &A).is_err());
    }
}
