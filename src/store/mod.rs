//! SQLite storage: one database file per data directory, in WAL mode.
//!
//! What lives here (see DESIGN.md §5):
//! - `snapshot`: one row, the automerge document saved whole (`AutoCommit::save`).
//! - `changes`: raw automerge changes made or received since that snapshot. On open the
//!   snapshot is loaded and the change rows are applied on top; when the rows outweigh the
//!   snapshot they are folded into a new one ([`Tx::replace_snapshot`]).
//! - `blobs`: value bytes, addressed by their hash. The document only holds a 16-byte hash per
//!   key, which keeps it small (large documents make automerge writes slow, see `doc`).
//! - `peer_sync`: each peer's persisted automerge sync state.
//! - `peer_addrs`: the last known addresses of authenticated peers, to reconnect after restart.
//! - `meta`: the node's secret key, the election term, the schema version.
//!
//! Only the replica's writer thread writes. Reads of values go through separate read-only
//! connections ([`Reader`]), which WAL mode lets run alongside the writer.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};

/// How durable an acknowledged write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A write that returned survives power loss (`PRAGMA synchronous=FULL`). The default.
    /// Changes that only arrived from peers are committed without the sync: a power loss may
    /// roll the newest of them back, and the next sync with a peer fetches them again.
    #[default]
    Full,
    /// A write that returned survives a crash of the process, not of the machine
    /// (`PRAGMA synchronous=NORMAL`): the last commits may roll back on power loss.
    Process,
}

/// 2: entries carry a clock stamp, deletions are tombstones, documents have epochs.
/// 3: the document spreads keys over bucket maps (`crate::doc`).
const SCHEMA_VERSION: i64 = 3;
const DB_FILE: &str = "murmur.sqlite3";
const LOCK_FILE: &str = "murmur.lock";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta      (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot  (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS changes   (seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blobs     (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peer_sync (peer BLOB PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peer_addrs(peer BLOB PRIMARY KEY, addr BLOB NOT NULL) WITHOUT ROWID;
";

/// The writer's handle on the database. Holds the directory lock for its whole life.
pub(crate) struct Store {
    conn: Connection,
    durability: Durability,
    /// Whether the connection is switched to `synchronous=NORMAL` for the next transaction.
    relaxed: bool,
    dir: PathBuf,
    db_path: PathBuf,
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
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Process => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // Values are keyed by hash, so bulk inserts land on random pages: SQLite's default
        // 2 MB page cache thrashes once the table outgrows it (a 100k-value catch-up spent
        // most of its commits re-reading pages). The cache grows only as pages are used.
        conn.pragma_update(None, "cache_size", -16384)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| corrupt(format!("schema: {e}")))?;
        let mut store = Store {
            conn,
            durability,
            relaxed: false,
            dir: dir.to_path_buf(),
            db_path,
            _lock: lock,
        };
        match store.meta_i64("schema_version")? {
            None => store.set_meta("schema_version", &SCHEMA_VERSION.to_be_bytes())?,
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(corrupt(format!(
                "schema version {v} is not supported by this version of Murmur ({SCHEMA_VERSION})"
            )))
            }
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
        Ok(Reader { conn })
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
        Ok(())
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

    /// Hashes of all stored values (read once at open, to find values still to fetch).
    pub fn blob_hashes(&self) -> Result<std::collections::HashSet<[u8; 16]>> {
        scan_hashes(&self.conn)
    }

    /// Reads one blob.
    pub fn blob(&self, hash: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT data FROM blobs WHERE hash = ?1")?
            .query_row([hash], |r| r.get(0))
            .optional()?)
    }

    /// Reads the blobs of `hashes` that are stored, in order, calling `f` with each until it
    /// returns false. One read transaction for all of them: outside one, every lookup takes
    /// and releases the file lock (3× slower at 100k lookups, BENCHMARKS.md W5 analysis).
    pub fn for_blobs(&self, hashes: &[[u8; 16]], mut f: impl FnMut(Vec<u8>) -> bool) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached("SELECT data FROM blobs WHERE hash = ?1")?;
            for h in hashes {
                if let Some(v) = stmt.query_row([h], |r| r.get(0)).optional()? {
                    if !f(v) {
                        break;
                    }
                }
            }
        }
        tx.finish()?;
        Ok(())
    }

    /// Reads the stored blobs in hash order, calling `f` with each hash and value until it
    /// returns false: one sequential scan, several times faster than looking each up when most
    /// are wanted.
    pub fn scan_blobs(&self, mut f: impl FnMut([u8; 16], Vec<u8>) -> bool) -> Result<()> {
        let mut stmt = self.conn.prepare_cached("SELECT hash, data FROM blobs")?;
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

    /// Chooses how the next transactions are synced. `relaxed` commits skip the fsync
    /// (`synchronous=NORMAL`) even under [`Durability::Full`]; the replica uses it for batches
    /// that acknowledge nothing (only changes and values from peers). This is safe because in
    /// WAL mode a power loss can only cut a suffix of the log: the next full commit syncs every
    /// earlier frame with it, and a lost suffix of peers' changes is fetched again by sync, the
    /// same as under [`Durability::Process`]. No acknowledged write depends on a relaxed commit.
    pub fn set_relaxed(&mut self, relaxed: bool) {
        if self.durability != Durability::Full || self.relaxed == relaxed {
            return;
        }
        let mode = if relaxed { "NORMAL" } else { "FULL" };
        if self.conn.pragma_update(None, "synchronous", mode).is_ok() {
            self.relaxed = relaxed;
        }
    }

    /// Starts a transaction: every write of one group commit goes through one.
    pub fn tx(&mut self) -> Result<Tx<'_>> {
        Ok(Tx {
            tx: self.conn.transaction()?,
        })
    }
}

/// One write transaction (one group commit).
pub(crate) struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl Tx<'_> {
    pub fn insert_change(&self, data: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached("INSERT INTO changes(data) VALUES (?1)")?
            .execute([data])?;
        Ok(())
    }

    pub fn insert_blob(&self, hash: &[u8], data: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO blobs(hash, data) VALUES (?1, ?2)")?
            .execute(params![hash, data])?;
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

    /// Deletes every blob whose hash is not in `keep`.
    pub fn retain_blobs(&self, keep: &std::collections::HashSet<[u8; 16]>) -> Result<usize> {
        let mut doomed = Vec::new();
        {
            let mut stmt = self.tx.prepare("SELECT hash FROM blobs")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let h: Vec<u8> = r.get(0)?;
                let known = <[u8; 16]>::try_from(h.as_slice())
                    .map(|h| keep.contains(&h))
                    .unwrap_or(false);
                if !known {
                    doomed.push(h);
                }
            }
        }
        let mut del = self.tx.prepare("DELETE FROM blobs WHERE hash = ?1")?;
        for h in &doomed {
            del.execute([h])?;
        }
        Ok(doomed.len())
    }

    /// Deletes the blobs with these hashes (absent ones are no error).
    pub fn delete_blobs(&self, hashes: &[[u8; 16]]) -> Result<()> {
        let mut del = self
            .tx
            .prepare_cached("DELETE FROM blobs WHERE hash = ?1")?;
        for h in hashes {
            del.execute([&h[..]])?;
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

    pub fn commit(self) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }
}

/// A read-only connection used to read values without going through the writer.
pub(crate) struct Reader {
    conn: Connection,
}

/// Every stored value hash, in one scan.
fn scan_hashes(conn: &Connection) -> Result<std::collections::HashSet<[u8; 16]>> {
    let mut stmt = conn.prepare("SELECT hash FROM blobs")?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = std::collections::HashSet::new();
    for h in rows {
        // A malformed hash cannot match any key: skipping it only costs a refetch.
        if let Ok(h) = <[u8; 16]>::try_from(h?.as_slice()) {
            out.insert(h);
        }
    }
    Ok(out)
}

impl Reader {
    /// Every stored value hash (see [`Store::blob_hashes`]), read on this connection.
    pub fn blob_hashes(&self) -> Result<std::collections::HashSet<[u8; 16]>> {
        scan_hashes(&self.conn)
    }

    /// Frees this connection's page cache (see [`Store::release_memory`]).
    pub fn release_memory(&self) {
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
    }

    pub fn blob(&self, hash: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT data FROM blobs WHERE hash = ?1")?
            .query_row([hash], |r| r.get(0))
            .optional()?)
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
        let tx = store.tx().unwrap();
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
        let tx = store.tx().unwrap();
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

    #[test]
    fn relaxed_commits_apply_only_under_full_durability_and_switch_back() {
        let sync_mode = |s: &Store| -> i64 {
            s.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut full = Store::open(dir.path(), Durability::Full).unwrap();
        assert_eq!(sync_mode(&full), 2, "FULL");
        full.set_relaxed(true);
        assert_eq!(sync_mode(&full), 1, "NORMAL while relaxed");
        full.set_relaxed(false);
        assert_eq!(sync_mode(&full), 2, "FULL again");
        drop(full);
        let mut process = Store::open(dir.path(), Durability::Process).unwrap();
        assert_eq!(sync_mode(&process), 1);
        process.set_relaxed(false);
        assert_eq!(sync_mode(&process), 1, "Process never becomes FULL");
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
