//! SQLite storage: one database file per data directory, in WAL mode.
//!
//! What lives here (see DESIGN.md §5):
//! - `snapshot`: one row, the automerge document saved whole (`AutoCommit::save`).
//! - `changes`: raw automerge changes made or received since that snapshot. On open the
//!   snapshot is loaded and the change rows are applied on top; when the rows outweigh the
//!   snapshot they are folded into a new one ([`Tx::replace_snapshot`]).
//! - `vals`: value bytes with their hash, in insertion order. The document only holds a
//!   16-byte hash per key, which keeps it small (large documents make automerge writes slow,
//!   see `doc`). Rows are found by hash through an in-memory index ([`ValueIndex`]) rather
//!   than a SQLite index: hashes are random, so a hash-keyed B-tree makes every commit rewrite
//!   about one page per value, where appending in rowid order touches a page per 30 values
//!   (BENCHMARKS.md, W1 and W3).
//! - `peer_sync`: each peer's persisted automerge sync state.
//! - `peer_addrs`: the last known addresses of authenticated peers, to reconnect after restart.
//! - `meta`: the node's secret key, the election term, the schema version.
//!
//! Only the replica's writer thread writes. Reads of values go through separate read-only
//! connections ([`Reader`]), which WAL mode lets run alongside the writer.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};

/// How durable an acknowledged write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A write that returned survives power loss: the write-ahead log is synced to disk after
    /// the commit, before the write is acknowledged (what `PRAGMA synchronous=FULL` does). The
    /// default. Changes that only arrived from peers are committed without the sync: a power
    /// loss may roll the newest of them back, and the next sync with a peer fetches them again.
    #[default]
    Full,
    /// A write that returned survives a crash of the process, not of the machine
    /// (`PRAGMA synchronous=NORMAL`): the last commits may roll back on power loss.
    Process,
}

/// 2: entries carry a clock stamp, deletions are tombstones, documents have epochs.
/// 3: the document spreads keys over bucket maps (`crate::doc`).
/// 4: values live in `vals`, in rowid order, found through [`ValueIndex`] (3's `blobs` table,
///    keyed by hash, is moved over on open).
const SCHEMA_VERSION: i64 = 4;
const DB_FILE: &str = "murmur.sqlite3";
const LOCK_FILE: &str = "murmur.lock";

const META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta      (k TEXT PRIMARY KEY, v BLOB NOT NULL);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshot  (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS changes   (seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vals      (id INTEGER PRIMARY KEY, hash BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS peer_sync (peer BLOB PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peer_addrs(peer BLOB PRIMARY KEY, addr BLOB NOT NULL) WITHOUT ROWID;
";

/// A value's 16-byte hash (see `crate::doc::value_hash`).
type Hash = [u8; 16];

/// Where each stored value lives: its hash to the rowid of its row in `vals`.
///
/// Built by one scan when the store opens, then kept up to date by the writer: a [`Tx`] records
/// its inserts and deletions and applies them here once it has committed, so a reader never
/// finds a rowid whose row it cannot see yet. Shared with the [`Reader`]s. About 30 bytes per
/// value (3 MB at 100k values), which buys append-only value inserts.
#[derive(Clone, Default)]
pub(crate) struct ValueIndex(Arc<RwLock<HashMap<Hash, i64>>>);

impl ValueIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Hash, i64>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Hash, i64>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    fn rowid(&self, hash: &[u8]) -> Option<i64> {
        let h: &Hash = hash.try_into().ok()?;
        self.read().get(h).copied()
    }

    /// Reads every stored value's hash and rowid on `conn` (one sequential scan).
    fn scan(conn: &Connection) -> Result<HashMap<Hash, i64>> {
        let mut stmt = conn.prepare("SELECT id, hash FROM vals")?;
        let mut rows = stmt.query([])?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next()? {
            let h: Vec<u8> = r.get(1)?;
            // A malformed hash cannot be any key's value: skipping it only costs a refetch.
            if let Ok(h) = Hash::try_from(h.as_slice()) {
                out.insert(h, r.get(0)?);
            }
        }
        Ok(out)
    }
}

/// Reads the value in row `id`, if it is still the value with `hash` (a deleted row's id can be
/// taken again by a later insert).
fn read_value(conn: &Connection, id: i64, hash: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT data FROM vals WHERE id = ?1 AND hash = ?2")?
        .query_row(params![id, hash], |r| r.get(0))
        .optional()?)
}

/// The writer's handle on the database. Holds the directory lock for its whole life.
pub(crate) struct Store {
    conn: Connection,
    index: ValueIndex,
    durability: Durability,
    dir: PathBuf,
    db_path: PathBuf,
    /// The write-ahead log next to `db_path`, which [`Store::sync`] syncs.
    log_path: PathBuf,
    /// Held (and locked) while the store is open; released when dropped.
    _lock: File,
}

/// What is needed to rebuild the document at open.
pub(crate) struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub changes: Vec<Vec<u8>>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, taking an exclusive lock on it.
    pub fn open(dir: &Path, durability: Durability) -> Result<Store> {
        let (store, ()) = Self::open_and(dir, durability, |_| ())?;
        Ok(store)
    }

    /// Like [`Store::open`], and runs `meanwhile` on the open store while another thread
    /// builds the value index (a scan of every stored value, 30-50 ms at 100k values): the
    /// replica loads its document meanwhile (BENCHMARKS.md, W5).
    pub fn open_and<T>(
        dir: &Path,
        durability: Durability,
        meanwhile: impl FnOnce(&mut Store) -> T,
    ) -> Result<(Store, T)> {
        let mut store = Self::open_unindexed(dir, durability)?;
        let reader = store.reader()?;
        let (scanned, out) = std::thread::scope(|s| {
            let scan = s.spawn(move || ValueIndex::scan(&reader.conn));
            let out = meanwhile(&mut store);
            (scan.join(), out)
        });
        let map =
            scanned.map_err(|_| Error::Storage("the scan of stored values panicked".into()))??;
        store.index = ValueIndex(Arc::new(RwLock::new(map)));
        Ok((store, out))
    }

    fn open_unindexed(dir: &Path, durability: Durability) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Storage(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Storage(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Storage(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )))
            }
        }
        let db_path = dir.join(DB_FILE);
        let corrupt = |detail: String| Error::Corrupt {
            path: dir.to_path_buf(),
            detail,
        };
        let conn = Connection::open(&db_path).map_err(|e| corrupt(e.to_string()))?;
        // The first statement that touches the file tells a database from garbage.
        // Free pages go back to the file system after a history compaction (only takes effect
        // on a new database, before the first table exists).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(|e| corrupt(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| corrupt(e.to_string()))?;
        // Commits write the log without syncing it; under `Durability::Full` the log is synced
        // after the commit instead ([`Store::sync`]), so that the replica can send a change to
        // its peers while the disk syncs it (BENCHMARKS.md, W2). Checkpoints sync the log
        // before they copy it into the database either way.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // SQLite's default 2 MB page cache thrashed in bulk catch-ups when values were keyed
        // by hash (schema 3); it still helps reads of many values. The cache grows only as
        // pages are used.
        conn.pragma_update(None, "cache_size", -16384)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // The version is read before any other table is made: a store of a newer schema is
        // refused untouched.
        conn.execute_batch(META_SCHEMA)
            .map_err(|e| corrupt(format!("schema: {e}")))?;
        let mut store = Store {
            conn,
            index: ValueIndex::default(),
            durability,
            dir: dir.to_path_buf(),
            log_path: dir.join(format!("{DB_FILE}-wal")),
            db_path,
            _lock: lock,
        };
        let version = store.meta_i64("schema_version")?;
        if let Some(v) = version.filter(|v| *v != SCHEMA_VERSION && *v != 3) {
            return Err(corrupt(format!(
                "schema version {v} is not supported by this version of Murmur ({SCHEMA_VERSION})"
            )));
        }
        store
            .conn
            .execute_batch(SCHEMA)
            .map_err(|e| corrupt(format!("schema: {e}")))?;
        match version {
            None => store.set_meta("schema_version", &SCHEMA_VERSION.to_be_bytes())?,
            Some(3) => store.migrate_from_3()?,
            Some(_) => {}
        }
        Ok(store)
    }

    /// Opens a read-only connection for value reads outside the writer thread.
    pub fn reader(&self) -> Result<Reader> {
        let conn = Connection::open_with_flags(
            &self.db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader {
            conn,
            index: self.index.clone(),
        })
    }

    /// Schema 3 kept values in `blobs`, keyed by hash: moves them to `vals` (in hash order,
    /// which is as good as any) in one transaction. Nothing else changed.
    fn migrate_from_3(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        let has_blobs: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'blobs'",
            [],
            |r| r.get(0),
        )?;
        if has_blobs {
            tx.execute_batch(
                "INSERT INTO vals(hash, data) SELECT hash, data FROM blobs ORDER BY hash;
                 DROP TABLE blobs;",
            )?;
        }
        tx.execute(
            "UPDATE meta SET v = ?1 WHERE k = 'schema_version'",
            [&SCHEMA_VERSION.to_be_bytes()[..]],
        )?;
        tx.commit()?;
        self.sync()
    }

    /// Builds an error that says the stored data cannot be used.
    pub fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.dir.clone(),
            detail: detail.into(),
        }
    }

    pub fn meta(&self, k: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()?)
    }

    pub fn meta_i64(&self, k: &str) -> Result<Option<i64>> {
        match self.meta(k)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| self.corrupt(format!("meta {k} has {} bytes, not 8", v.len())))?;
                Ok(Some(i64::from_be_bytes(b)))
            }
        }
    }

    pub fn set_meta(&mut self, k: &str, v: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            params![k, v],
        )?;
        self.sync()
    }

    /// The node's 32-byte secret key, created (randomly) and stored on first use.
    pub fn secret_key(&mut self) -> Result<[u8; 32]> {
        if let Some(v) = self.meta("secret_key")? {
            return v
                .as_slice()
                .try_into()
                .map_err(|_| self.corrupt("stored secret key is not 32 bytes"));
        }
        let key: [u8; 32] = rand::random();
        self.set_meta("secret_key", &key)?;
        Ok(key)
    }

    /// Reads the snapshot and change rows the document is rebuilt from.
    pub fn load_doc(&self) -> Result<StoredDoc> {
        let snapshot = self
            .conn
            .query_row("SELECT data FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        let mut stmt = self.conn.prepare("SELECT data FROM changes ORDER BY seq")?;
        let changes = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(StoredDoc { snapshot, changes })
    }

    /// Whether the value with `hash` is stored (committed).
    pub fn has_blob(&self, hash: &[u8]) -> bool {
        self.index.rowid(hash).is_some()
    }

    /// Reads one blob.
    pub fn blob(&self, hash: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.index.rowid(hash) {
            Some(id) => read_value(&self.conn, id, hash),
            None => Ok(None),
        }
    }

    /// Of `hashes`, those stored, in the order they are stored (reading them in this order reads
    /// the values table sequentially).
    pub fn in_store_order(&self, hashes: impl IntoIterator<Item = [u8; 16]>) -> Vec<[u8; 16]> {
        let mut rows: Vec<(i64, [u8; 16])> = {
            let index = self.index.read();
            hashes
                .into_iter()
                .filter_map(|h| Some((*index.get(&h)?, h)))
                .collect()
        };
        rows.sort_unstable_by_key(|r| r.0);
        rows.into_iter().map(|(_, h)| h).collect()
    }

    /// Reads the stored values of `hashes`, in the order given, calling `f` with each hash and
    /// value until it returns false (after taking that value). Returns how many of `hashes`
    /// were passed (read, or skipped as not stored): the rest were not looked at. One read
    /// transaction for all of them: outside one, every lookup takes and releases the file lock
    /// (3× slower at 100k lookups, BENCHMARKS.md W5 analysis).
    pub fn read_blobs(
        &self,
        hashes: &[[u8; 16]],
        mut f: impl FnMut(&[u8; 16], Vec<u8>) -> bool,
    ) -> Result<usize> {
        let tx = self.conn.unchecked_transaction()?;
        for (i, h) in hashes.iter().enumerate() {
            let Some(id) = self.index.rowid(h) else {
                continue;
            };
            if let Some(v) = read_value(&tx, id, h)? {
                if !f(h, v) {
                    tx.finish()?;
                    return Ok(i + 1);
                }
            }
        }
        tx.finish()?;
        Ok(hashes.len())
    }

    /// Reads the stored values after row `after` in storage order (one sequential scan), calling
    /// `f` with each row id, hash and value until it returns false. Returns true if the scan
    /// reached the end of the table.
    pub fn scan_blobs_after(
        &self,
        after: i64,
        mut f: impl FnMut(i64, [u8; 16], Vec<u8>) -> bool,
    ) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, hash, data FROM vals WHERE id > ?1 ORDER BY id")?;
        let mut rows = stmt.query([after])?;
        while let Some(r) = rows.next()? {
            let h: Vec<u8> = r.get(1)?;
            // A malformed hash cannot be any key's value: skip it.
            if let Ok(h) = <[u8; 16]>::try_from(h.as_slice()) {
                if !f(r.get(0)?, h, r.get(2)?) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Reads every stored blob in the order they were stored, calling `f` with each hash and
    /// value until it returns false: one sequential scan, several times faster than looking
    /// each up when most are wanted. (Tests read a whole store with it.)
    #[cfg(test)]
    pub fn scan_blobs(&self, mut f: impl FnMut([u8; 16], Vec<u8>) -> bool) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash, data FROM vals ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let h: Vec<u8> = r.get(0)?;
            // A malformed hash cannot be any key's value: skip it.
            if let Ok(h) = <[u8; 16]>::try_from(h.as_slice()) {
                if !f(h, r.get(1)?) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Every persisted sync state, by peer.
    pub fn peer_sync_states(&self) -> Result<Vec<([u8; 32], Vec<u8>)>> {
        self.rows_by_peer("SELECT peer, state FROM peer_sync")
    }

    /// Every persisted peer address (postcard-encoded `EndpointAddr`), by peer.
    pub fn peer_addrs(&self) -> Result<Vec<([u8; 32], Vec<u8>)>> {
        self.rows_by_peer("SELECT peer, addr FROM peer_addrs")
    }

    fn rows_by_peer(&self, sql: &str) -> Result<Vec<([u8; 32], Vec<u8>)>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // A row with a malformed peer id is skipped: it can only cost a resync.
        Ok(rows
            .into_iter()
            .filter_map(|(p, v)| Some((<[u8; 32]>::try_from(p.as_slice()).ok()?, v)))
            .collect())
    }

    /// The epoch of the stored document.
    pub fn epoch(&self) -> Result<crate::history::EpochId> {
        match self.meta("epoch")? {
            None => Ok(crate::history::EpochId::ZERO),
            Some(b) => postcard::from_bytes(&b)
                .map_err(|e| self.corrupt(format!("stored epoch is unreadable: {e}"))),
        }
    }

    /// Gives the space freed by a history compaction back to the file system: frees pages
    /// and truncates the write-ahead log. Best effort (a reader may hold the log).
    pub fn shrink(&self) {
        // `incremental_vacuum` frees one page per step of its statement, so it must be stepped
        // to the end (a single `execute` would free one page). Skip it while the free list is
        // small: those pages are reused by the next writes anyway.
        let pages = |pragma: &str| -> i64 {
            self.conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .unwrap_or(0)
        };
        let free = pages("freelist_count");
        if free > 0 && free * 8 >= pages("page_count") {
            if let Ok(mut stmt) = self.conn.prepare("PRAGMA incremental_vacuum") {
                if let Ok(mut rows) = stmt.query([]) {
                    while let Ok(Some(_)) = rows.next() {}
                }
            }
        }
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    /// Frees the page cache (up to 16 MB, filled by bulk work) while the replica is idle; the
    /// next transaction reads what it needs back from the file system's cache.
    pub fn release_memory(&self) {
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
    }

    /// Under [`Durability::Full`], syncs every commit made so far to disk (the write-ahead
    /// log, where commits go); does nothing under [`Durability::Process`].
    ///
    /// [`Tx::commit`] calls it. The replica instead commits with [`Tx::commit_unsynced`],
    /// sends its peers the changes, then calls this before it acknowledges anything; batches
    /// that acknowledge nothing (only changes and values from peers) skip it. That is safe
    /// because in WAL mode a power loss can only cut a suffix of the log: the next sync covers
    /// every earlier commit, and a lost suffix of peers' changes is fetched again by sync.
    ///
    /// An error means the disk did not confirm the commits: they may or may not survive a
    /// power loss.
    pub fn sync(&self) -> Result<()> {
        sync_log(self.durability, &self.log_path)
    }

    /// Starts a transaction: every write of one group commit goes through one.
    pub fn tx(&mut self) -> Result<Tx<'_>> {
        Ok(Tx {
            tx: self.conn.transaction()?,
            durability: self.durability,
            log_path: &self.log_path,
            index: &self.index,
            added: HashMap::new(),
            removed: HashSet::new(),
        })
    }
}

/// One write transaction (one group commit).
pub(crate) struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    durability: Durability,
    log_path: &'a Path,
    index: &'a ValueIndex,
    /// Values inserted in this transaction (hash to rowid): the index learns them on commit.
    added: HashMap<Hash, i64>,
    /// Values of the index deleted in this transaction: the index forgets them on commit.
    removed: HashSet<Hash>,
}

impl Tx<'_> {
    pub fn insert_change(&self, data: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached("INSERT INTO changes(data) VALUES (?1)")?
            .execute([data])?;
        Ok(())
    }

    /// The rowid of the value with `hash` as this transaction sees it.
    fn rowid(&self, hash: &Hash) -> Option<i64> {
        if let Some(id) = self.added.get(hash) {
            return Some(*id);
        }
        if self.removed.contains(hash) {
            return None;
        }
        self.index.read().get(hash).copied()
    }

    /// Stores a value under its hash; a value already stored is left as it is.
    pub fn insert_blob(&mut self, hash: &[u8], data: &[u8]) -> Result<()> {
        let h: Hash = hash.try_into().map_err(|_| {
            Error::Storage(format!("a value hash has {} bytes, not 16", hash.len()))
        })?;
        if self.rowid(&h).is_some() {
            return Ok(());
        }
        self.tx
            .prepare_cached("INSERT INTO vals(hash, data) VALUES (?1, ?2)")?
            .execute(params![hash, data])?;
        self.added.insert(h, self.tx.last_insert_rowid());
        Ok(())
    }

    /// Deletes the value with `hash`, if stored.
    fn delete_blob(&mut self, h: &Hash) -> Result<()> {
        let Some(id) = self.rowid(h) else {
            return Ok(());
        };
        self.tx
            .prepare_cached("DELETE FROM vals WHERE id = ?1")?
            .execute([id])?;
        if self.added.remove(h).is_none() {
            self.removed.insert(*h);
        }
        Ok(())
    }

    /// Replaces the snapshot with `data` and drops every change row (they are all in it).
    pub fn replace_snapshot(&self, data: &[u8]) -> Result<()> {
        self.tx.execute(
            "INSERT INTO snapshot(id, data) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            [data],
        )?;
        self.tx.execute("DELETE FROM changes", [])?;
        Ok(())
    }

    /// Deletes every blob whose hash is not in `keep`; returns how many.
    pub fn retain_blobs(&mut self, keep: &HashSet<[u8; 16]>) -> Result<usize> {
        let mut doomed: Vec<Hash> = self
            .index
            .read()
            .keys()
            .filter(|h| !keep.contains(*h) && !self.removed.contains(*h))
            .copied()
            .collect();
        doomed.extend(self.added.keys().filter(|h| !keep.contains(*h)));
        // Rows with malformed hashes are in no index: they go too.
        let malformed = self
            .tx
            .prepare_cached("DELETE FROM vals WHERE length(hash) != 16")?
            .execute([])?;
        for h in &doomed {
            self.delete_blob(h)?;
        }
        Ok(doomed.len() + malformed)
    }

    /// Deletes the blobs with these hashes (absent ones are no error).
    pub fn delete_blobs(&mut self, hashes: &[[u8; 16]]) -> Result<()> {
        for h in hashes {
            self.delete_blob(h)?;
        }
        Ok(())
    }

    pub fn set_meta(&self, k: &str, v: &[u8]) -> Result<()> {
        self.tx.execute(
            "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            params![k, v],
        )?;
        Ok(())
    }

    pub fn set_peer_sync(&self, peer: &[u8; 32], state: &[u8]) -> Result<()> {
        self.tx.execute(
            "INSERT INTO peer_sync(peer, state) VALUES (?1, ?2) ON CONFLICT(peer) DO UPDATE SET state = excluded.state",
            params![&peer[..], state],
        )?;
        Ok(())
    }

    pub fn set_peer_addr(&self, peer: &[u8; 32], addr: &[u8]) -> Result<()> {
        self.tx.execute(
            "INSERT INTO peer_addrs(peer, addr) VALUES (?1, ?2) ON CONFLICT(peer) DO UPDATE SET addr = excluded.addr",
            params![&peer[..], addr],
        )?;
        Ok(())
    }

    /// Records the document's new epoch; the per-peer sync states of the old one are void.
    pub fn set_epoch(&self, epoch: &crate::history::EpochId) -> Result<()> {
        let bytes = postcard::to_stdvec(epoch)
            .map_err(|e| Error::Storage(format!("cannot encode epoch: {e}")))?;
        self.set_meta("epoch", &bytes)?;
        self.tx.execute("DELETE FROM peer_sync", [])?;
        Ok(())
    }

    /// Commits, and under [`Durability::Full`] syncs the commit to disk (see [`Store::sync`]).
    pub fn commit(self) -> Result<()> {
        let (durability, log_path) = (self.durability, self.log_path);
        self.commit_unsynced()?;
        sync_log(durability, log_path)
    }

    /// Commits without waiting for the disk: the caller calls [`Store::sync`] before it
    /// acknowledges anything that depends on the commit. Then brings the value index up to date
    /// (only then: a reader that finds a rowid there must find its row).
    pub fn commit_unsynced(self) -> Result<()> {
        self.tx.commit()?;
        let mut index = self.index.write();
        for h in &self.removed {
            index.remove(h);
        }
        index.extend(self.added);
        Ok(())
    }
}

/// Syncs the write-ahead log at `log_path` (see [`Store::sync`]): what `synchronous=FULL`
/// does at every commit. fsync acts on the file, whichever descriptor it is called through.
fn sync_log(durability: Durability, log_path: &Path) -> Result<()> {
    if durability != Durability::Full {
        return Ok(());
    }
    #[cfg(test)]
    tests::SYNCS.with(|n| n.set(n.get() + 1));
    let synced = match File::open(log_path) {
        Ok(f) => f.sync_data(),
        // SQLite keeps the log while the store is open; without one, no commit waits in it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    synced.map_err(|e| {
        Error::Storage(format!(
            "the disk did not confirm the write ({e}): it is stored, but may not survive a \
             power loss"
        ))
    })
}

/// A read-only connection used to read values without going through the writer.
pub(crate) struct Reader {
    conn: Connection,
    index: ValueIndex,
}

impl Reader {
    /// Frees this connection's page cache (see [`Store::release_memory`]).
    pub fn release_memory(&self) {
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
    }

    /// Reads one stored value (committed values only).
    pub fn blob(&self, hash: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.index.rowid(hash) {
            Some(id) => read_value(&self.conn, id, hash),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_a_directory_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), Durability::Full).unwrap();
        match Store::open(dir.path(), Durability::Full) {
            Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, got a second store"),
        }
        drop(first);
        Store::open(dir.path(), Durability::Full).expect("lock released on drop");
    }

    #[test]
    fn garbage_database_file_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0xAB; 8192]).unwrap();
        match Store::open(dir.path(), Durability::Full) {
            Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("garbage opened as a database"),
        }
        // Nothing was changed: the garbage is still there, byte for byte.
        assert_eq!(
            std::fs::read(dir.path().join(DB_FILE)).unwrap(),
            vec![0xAB; 8192]
        );
    }

    /// A store holding `n` blobs of 1 KB.
    fn store_with_blobs(dir: &Path, n: u32) -> Store {
        let mut store = Store::open(dir, Durability::Process).unwrap();
        let mut tx = store.tx().unwrap();
        for i in 0..n {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&i.to_be_bytes());
            tx.insert_blob(&h, &[7u8; 1000]).unwrap();
        }
        tx.commit().unwrap();
        store
    }

    #[test]
    fn shrink_returns_freed_pages_to_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_blobs(dir.path(), 2000);
        store.shrink();
        let db = dir.path().join(DB_FILE);
        let full = std::fs::metadata(&db).unwrap().len();
        assert!(full > 2_000_000, "2000 blobs of 1 KB take {full} bytes");
        let mut tx = store.tx().unwrap();
        assert_eq!(tx.retain_blobs(&Default::default()).unwrap(), 2000);
        tx.commit().unwrap();
        store.shrink();
        let after = std::fs::metadata(&db).unwrap().len();
        assert!(
            after < 200_000,
            "after dropping every blob the file is {after} bytes"
        );
        drop(store);
        Store::open(dir.path(), Durability::Process).expect("reopens after the vacuum");
    }

    #[test]
    fn release_memory_empties_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_blobs(dir.path(), 4000);
        let cache_used = |store: &Store| {
            let (mut cur, mut high) = (0, 0);
            // SAFETY: the handle is valid while `store` lives; the call only reads counters.
            let rc = unsafe {
                rusqlite::ffi::sqlite3_db_status(
                    store.conn.handle(),
                    rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                    &mut cur,
                    &mut high,
                    0,
                )
            };
            assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
            cur
        };
        let full = cache_used(&store);
        assert!(full > 2 << 20, "4 MB written leave {full} bytes cached");
        store.release_memory();
        let after = cache_used(&store);
        assert!(after < full / 8, "{after} of {full} bytes still cached");
        // The data is all still there.
        let mut n = 0;
        store
            .scan_blobs(|_, v| {
                n += v.len();
                true
            })
            .unwrap();
        assert_eq!(n, 4000 * 1000);
    }

    thread_local! {
        /// Log syncs made by this thread (see `sync_log`).
        pub(super) static SYNCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn commits_are_synced_only_under_full_durability_and_only_when_asked() {
        let syncs = || SYNCS.with(|n| n.get());
        let dir = tempfile::tempdir().unwrap();
        let mut full = Store::open(dir.path(), Durability::Full).unwrap();
        let mode: i64 = full
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 1, "SQLite itself never syncs at commit (NORMAL)");
        let before = syncs();
        let mut tx = full.tx().unwrap();
        tx.insert_blob(&[1; 16], b"v").unwrap();
        tx.commit().unwrap();
        assert_eq!(syncs(), before + 1, "commit syncs");
        let mut tx = full.tx().unwrap();
        tx.insert_blob(&[2; 16], b"w").unwrap();
        tx.commit_unsynced().unwrap();
        assert_eq!(syncs(), before + 1, "commit_unsynced does not");
        full.sync().unwrap();
        assert_eq!(syncs(), before + 2);
        drop(full);
        let mut process = Store::open(dir.path(), Durability::Process).unwrap();
        let before = syncs();
        let tx = process.tx().unwrap();
        tx.commit().unwrap();
        process.sync().unwrap();
        assert_eq!(syncs(), before, "Process never syncs");
        assert_eq!(process.blob(&[2; 16]).unwrap().as_deref(), Some(&b"w"[..]));
    }

    fn rows(store: &Store) -> i64 {
        store
            .conn
            .query_row("SELECT count(*) FROM vals", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_value_is_readable_once_its_transaction_committed_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), Durability::Full).unwrap();
        let reader = store.reader().unwrap();
        let (h1, h2) = ([1u8; 16], [2u8; 16]);
        let mut tx = store.tx().unwrap();
        tx.insert_blob(&h1, b"one").unwrap();
        // The same value twice (in one transaction, then in the next): one row.
        tx.insert_blob(&h1, b"one").unwrap();
        assert_eq!(reader.blob(&h1).unwrap(), None, "not before the commit");
        tx.commit().unwrap();
        assert_eq!(reader.blob(&h1).unwrap().as_deref(), Some(&b"one"[..]));
        let mut tx = store.tx().unwrap();
        tx.insert_blob(&h1, b"one").unwrap();
        tx.insert_blob(&h2, b"two").unwrap();
        tx.commit().unwrap();
        assert_eq!(rows(&store), 2);
        assert!(tx_err_on_bad_hash(&mut store));
        drop((reader, store));
        let store = Store::open(dir.path(), Durability::Full).unwrap();
        assert_eq!(store.blob(&h2).unwrap().as_deref(), Some(&b"two"[..]));
        assert!(store.has_blob(&h1) && !store.has_blob(&[3u8; 16]));
        let ordered = store.in_store_order([h2, [3u8; 16], h1]);
        assert_eq!(
            ordered,
            vec![h1, h2],
            "in stored order, without what is not stored"
        );
        let mut seen = Vec::new();
        let passed = store
            .read_blobs(&[h2, [3u8; 16], h1], |h, v| {
                seen.push((*h, v));
                true
            })
            .unwrap();
        assert_eq!(passed, 3);
        assert_eq!(seen, vec![(h2, b"two".to_vec()), (h1, b"one".to_vec())]);
        // Stopping after the first value leaves the rest unread.
        let passed = store.read_blobs(&ordered, |_, _| false).unwrap();
        assert_eq!(passed, 1);
    }

    /// A hash that is not 16 bytes is refused and stores nothing.
    fn tx_err_on_bad_hash(store: &mut Store) -> bool {
        let before = rows(store);
        let mut tx = store.tx().unwrap();
        let refused = tx.insert_blob(&[1u8; 15], b"x").is_err();
        tx.commit().unwrap();
        refused && rows(store) == before
    }

    #[test]
    fn a_transaction_that_does_not_commit_leaves_values_and_index_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), Durability::Full).unwrap();
        let (kept, dropped) = ([1u8; 16], [2u8; 16]);
        let mut tx = store.tx().unwrap();
        tx.insert_blob(&kept, b"kept").unwrap();
        tx.commit().unwrap();
        let mut tx = store.tx().unwrap();
        tx.insert_blob(&dropped, b"dropped").unwrap();
        tx.delete_blobs(&[kept]).unwrap();
        drop(tx); // rolled back
        assert!(store.has_blob(&kept) && !store.has_blob(&dropped));
        assert_eq!(store.blob(&kept).unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(rows(&store), 1);
    }

    #[test]
    fn a_value_deleted_and_stored_again_in_one_transaction_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), Durability::Full).unwrap();
        let (h, other) = ([1u8; 16], [2u8; 16]);
        let mut tx = store.tx().unwrap();
        tx.insert_blob(&h, b"v").unwrap();
        tx.insert_blob(&other, b"w").unwrap();
        tx.commit().unwrap();
        let mut tx = store.tx().unwrap();
        tx.delete_blobs(&[h]).unwrap();
        tx.insert_blob(&h, b"v").unwrap();
        assert_eq!(tx.retain_blobs(&HashSet::from([h])).unwrap(), 1);
        tx.commit().unwrap();
        assert_eq!(store.blob(&h).unwrap().as_deref(), Some(&b"v"[..]));
        assert!(!store.has_blob(&other));
        assert_eq!(rows(&store), 1);
        drop(store);
        let store = Store::open(dir.path(), Durability::Full).unwrap();
        assert_eq!(store.blob(&h).unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_schema_3_store_has_its_values_moved_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What schema 3 left on disk: values keyed by hash in `blobs`.
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
                 CREATE TABLE blobs (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO meta(k, v) VALUES ('schema_version', ?1)",
                [&3i64.to_be_bytes()[..]],
            )
            .unwrap();
            for i in 0..3u8 {
                conn.execute(
                    "INSERT INTO blobs(hash, data) VALUES (?1, ?2)",
                    params![&[i; 16][..], &[i; 5][..]],
                )
                .unwrap();
            }
        }
        let store = Store::open(dir.path(), Durability::Full).unwrap();
        for i in 0..3u8 {
            assert_eq!(store.blob(&[i; 16]).unwrap(), Some(vec![i; 5]));
        }
        assert_eq!(
            store.meta_i64("schema_version").unwrap(),
            Some(SCHEMA_VERSION)
        );
        let old_table: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'blobs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_table, 0);
    }

    #[test]
    fn a_store_of_an_unknown_schema_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        {
            // A store of a later version, with tables this version does not know.
            let conn = Connection::open(&db).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
                 CREATE TABLE future (x BLOB);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO meta(k, v) VALUES ('schema_version', ?1)",
                [&99i64.to_be_bytes()[..]],
            )
            .unwrap();
        }
        match Store::open(dir.path(), Durability::Full) {
            Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("99"), "{detail}"),
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("schema 99 opened"),
        }
        let conn = Connection::open(&db).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(tables, ["future", "meta"], "no table was added");
    }

    #[test]
    fn secret_key_is_stable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = Store::open(dir.path(), Durability::Full)
            .unwrap()
            .secret_key()
            .unwrap();
        let k2 = Store::open(dir.path(), Durability::Full)
            .unwrap()
            .secret_key()
            .unwrap();
        assert_eq!(k1, k2);
    }
}
