//! The automerge document as a key-value map.
//!
//! The document maps each key to a 16-byte hash of its value (a `ScalarValue::Bytes`), never to
//! the value itself: the value bytes live in the store's `blobs` table and travel beside the
//! changes. Keeping the document small matters because a document loaded from disk (or received
//! whole over sync) makes every later write cost time proportional to the bytes of all values in
//! it (measured: 3 ms per put at 100k keys of 100 bytes, against 23 µs when built in memory).
//!
//! Each process start uses a fresh automerge actor: the node's 32-byte ID followed by 8 random
//! bytes. The random part means a change lost in a crash can never collide with a later one on
//! the same `(actor, seq)`; the ID part tells every replica which node wrote an operation (the
//! `origin` of events).

use std::collections::HashSet;

use automerge::{
    legacy::OpType,
    sync::{self, SyncDoc},
    transaction::Transactable,
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

/// A live key's current state as the document resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Hash of the winning value.
    pub hash: ValueHash,
    /// The node that wrote the winning value.
    pub origin: NodeBytes,
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

    /// Sets `key` to the value with hash `hash` (in the open transaction).
    pub fn put(&mut self, key: &str, hash: &ValueHash) -> Result<(), automerge::AutomergeError> {
        self.doc.put(ROOT, key, ScalarValue::Bytes(hash.to_vec()))
    }

    /// Deletes `key` (in the open transaction). Deleting an absent key changes nothing.
    pub fn delete(&mut self, key: &str) -> Result<(), automerge::AutomergeError> {
        if self.doc.get(ROOT, key)?.is_some() {
            self.doc.delete(ROOT, key)?;
        }
        Ok(())
    }

    /// Commits the open transaction; returns the change it made, if any.
    pub fn commit(&mut self) -> Option<Change> {
        self.doc.commit()?;
        self.doc.get_last_local_change()
    }

    /// The current value of `key`, if it has one the document understands.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let (value, id) = self.doc.get(ROOT, key).ok()??;
        entry_of(value, &id)
    }

    /// Every live key and its entry, in key order.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        self.doc
            .keys(ROOT)
            .filter_map(|k| self.get(&k).map(|e| (k, e)))
            .collect()
    }

    /// Hashes of every value still visible in the document, conflicting ones included: the
    /// values a replica must keep (anything else may be garbage-collected).
    pub fn visible_hashes(&self) -> HashSet<ValueHash> {
        let mut out = HashSet::new();
        for k in self.doc.keys(ROOT) {
            if let Ok(all) = self.doc.get_all(ROOT, k.as_str()) {
                for (v, id) in all {
                    if let Some(e) = entry_of(v, &id) {
                        out.insert(e.hash);
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
    pub fn generate_sync_message(&mut self, state: &mut sync::State) -> Option<Vec<u8>> {
        self.doc
            .sync()
            .generate_sync_message(state)
            .map(|m| m.encode())
    }

    /// Applies an automerge sync message from a peer.
    pub fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        bytes: &[u8],
    ) -> Result<(), String> {
        let msg = sync::Message::decode(bytes).map_err(|e| format!("bad sync message: {e}"))?;
        self.doc
            .sync()
            .receive_sync_message(state, msg)
            .map_err(|e| format!("sync message rejected: {e}"))
    }
}

fn entry_of(value: Value<'_>, id: &automerge::ObjId) -> Option<Entry> {
    let hash = match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Bytes(b) => ValueHash::try_from(b.as_slice()).ok()?,
            _ => return None,
        },
        Value::Object(_) => return None,
    };
    let origin = match id {
        automerge::ObjId::Id(_, actor, _) => actor_origin(actor)?,
        automerge::ObjId::Root => return None,
    };
    Some(Entry { hash, origin })
}

/// What one change did to the map: the root keys it touched, and who made it.
pub(crate) struct ChangeSummary {
    /// The node that made the change (None for actors Murmur did not make).
    pub origin: Option<NodeBytes>,
    /// Root-map keys the change put or deleted.
    pub keys: Vec<String>,
}

/// Hashes of the values a change puts at the root.
pub(crate) fn put_hashes(change: &Change) -> Vec<ValueHash> {
    change
        .decode()
        .operations
        .iter()
        .filter(|op| op.obj == automerge::legacy::ObjectId::Root)
        .filter_map(|op| match &op.action {
            OpType::Put(ScalarValue::Bytes(b)) => ValueHash::try_from(b.as_slice()).ok(),
            _ => None,
        })
        .collect()
}

/// Decodes a change to find which keys it touched.
pub(crate) fn summarize(change: &Change) -> ChangeSummary {
    let expanded = change.decode();
    let mut keys = Vec::new();
    for op in &expanded.operations {
        if op.obj != automerge::legacy::ObjectId::Root {
            continue;
        }
        let automerge::legacy::Key::Map(k) = &op.key else {
            continue;
        };
        if matches!(op.action, OpType::Delete | OpType::Put(_)) {
            keys.push(k.to_string());
        }
    }
    ChangeSummary {
        origin: actor_origin(change.actor_id()),
        keys,
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
        d.put("k", &value_hash(b"v")).unwrap();
        let c = d.commit().expect("a change");
        let s = summarize(&c);
        assert_eq!(s.keys, vec!["k".to_string()]);
        assert_eq!(s.origin, Some(A));
        assert_eq!(
            d.get("k"),
            Some(Entry {
                hash: value_hash(b"v"),
                origin: A
            })
        );
        d.delete("k").unwrap();
        d.delete("absent").unwrap();
        assert!(d.commit().is_some());
        assert_eq!(d.get("k"), None);
        // Deleting what is not there makes no change at all.
        d.delete("k").unwrap();
        assert!(d.commit().is_none());
    }

    #[test]
    fn concurrent_puts_resolve_identically_on_both_sides() {
        let mut a = KvDoc::new(&A);
        let mut b = KvDoc::new(&B);
        a.put("k", &value_hash(b"a")).unwrap();
        let ca = a.commit().unwrap();
        b.put("k", &value_hash(b"b")).unwrap();
        let cb = b.commit().unwrap();
        a.apply_changes(vec![cb]).unwrap();
        b.apply_changes(vec![ca]).unwrap();
        assert_eq!(a.get("k"), b.get("k"));
        assert_eq!(
            a.visible_hashes().len(),
            2,
            "both values are kept as a conflict"
        );
    }

    #[test]
    fn reload_from_snapshot_and_changes_gives_same_map() {
        let mut d = KvDoc::new(&A);
        d.put("a", &value_hash(b"1")).unwrap();
        d.commit();
        let snap = d.save();
        d.put("b", &value_hash(b"2")).unwrap();
        let c = d.commit().unwrap();
        let re = KvDoc::load(Some(&snap), &[c.raw_bytes().to_vec()], &A).unwrap();
        assert_eq!(re.entries(), d.entries());
    }

    #[test]
    fn garbage_snapshot_is_an_error_not_a_panic() {
        assert!(KvDoc::load(Some(&[1, 2, 3]), &[], &A).is_err());
        assert!(KvDoc::load(None, &[vec![9; 40]], &A).is_err());
    }
}
