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

use rusqlite::{config::DbConfig, params, Connection, OpenFlags, OptionalExtension};

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
/// Where a new store is built before it is renamed to [`DB_FILE`] (see [`create`]).
const NEW_DB_FILE: &str = "murmur.sqlite3.new";
const LOCK_FILE: &str = "murmur.lock";
/// How long a statement waits for another connection's lock before it fails with
/// `SQLITE_BUSY`.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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

    /// Reads every stored value's hash and rowid through `reader` (one sequential scan).
    fn scan(reader: &Reader) -> Result<HashMap<Hash, i64>> {
        let scan = || -> rusqlite::Result<_> {
            let mut stmt = reader.conn.prepare("SELECT id, hash FROM vals")?;
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
        };
        scan().map_err(reader.sql())
    }
}

/// Reads the value in row `id`, if it is still the value with `hash` (a deleted row's id can be
/// taken again by a later insert).
fn read_value(conn: &Connection, id: i64, hash: &[u8]) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT data FROM vals WHERE id = ?1 AND hash = ?2")?
        .query_row(params![id, hash], |r| r.get(0))
        .optional()
}

/// What a SQLite error on the store in `dir` means, said so that the user knows what to do:
/// the one place that reads SQLite's result codes. `conn`, the connection the error happened
/// on, tells the system error behind an I/O error (a full disk is one when SQLite cannot grow
/// its shared-memory file).
///
/// Only a damaged file is [`Error::Corrupt`], whose advice is to restore or move the database
/// away. A full disk, a file or directory that cannot be written and a lock held by another
/// connection are [`Error::Storage`]: the store is intact and opens once the cause is gone.
pub(crate) fn sql_error(dir: &Path, conn: Option<&Connection>, e: rusqlite::Error) -> Error {
    use rusqlite::ffi;
    use std::io::ErrorKind;
    let d = dir.display();
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
        // Not reported by SQLite: a row that does not hold what this version of Murmur wrote.
        other => return Error::Storage(format!("unexpected data in the database in {d}: {other}")),
    };
    let full = || {
        Error::Storage(format!(
            "the disk holding {d} is full ({e}); free some space and retry: what is stored is \
             intact"
        ))
    };
    let denied = || read_only(dir, &e);
    // SAFETY: `c` is an open connection; the call only reads its last system error code.
    let errno = conn.map(|c| unsafe { ffi::sqlite3_system_errno(c.handle()) });
    let os = errno
        .filter(|n| *n != 0)
        .map(std::io::Error::from_raw_os_error);
    match code & 0xff {
        ffi::SQLITE_CORRUPT | ffi::SQLITE_NOTADB => Error::Corrupt {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        },
        ffi::SQLITE_FULL => full(),
        ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => Error::Storage(format!(
            "the database in {d} is locked by another connection ({e}), such as an sqlite3 \
             shell or a backup tool, for longer than Murmur waits ({} s); close it and retry",
            BUSY_TIMEOUT.as_secs()
        )),
        ffi::SQLITE_READONLY | ffi::SQLITE_PERM | ffi::SQLITE_AUTH => denied(),
        ffi::SQLITE_NOMEM => Error::Storage(format!(
            "out of memory working on the database in {d} ({e})"
        )),
        _ => match os.as_ref().map(|o| o.kind()) {
            Some(ErrorKind::StorageFull | ErrorKind::QuotaExceeded) => full(),
            Some(ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => denied(),
            _ if code & 0xff == ffi::SQLITE_CANTOPEN => Error::Storage(format!(
                "cannot open the database in {d} ({e}{}); check that the directory exists and \
                 that this user may read and write it and its files",
                os.map(|o| format!(": {o}")).unwrap_or_default()
            )),
            _ => Error::Storage(format!(
                "the database in {d} failed ({e}{})",
                os.map(|o| format!(": {o}")).unwrap_or_default()
            )),
        },
    }
}

/// The store in `dir` cannot be written, because of `why`.
fn read_only(dir: &Path, why: &dyn std::fmt::Display) -> Error {
    Error::Storage(format!(
        "the database in {} cannot be written ({why}): the directory or its files are \
         read-only or belong to another user; give this user read and write access to them, \
         or choose another storage_path",
        dir.display()
    ))
}

/// A failed file system operation `what`, with advice where there is any.
fn io_error(what: String, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    let advice = match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "; the disk is full: free some space and retry"
        }
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "; this user may not write there: give it read and write access, or choose another \
             storage_path"
        }
        _ => "",
    };
    Error::Storage(format!("{what}: {e}{advice}"))
}

/// The exclusive hold of an open [`Store`] on its data directory; released when dropped.
///
/// The directory itself is locked (`flock` on a descriptor of the directory): deleting or
/// replacing a file in it cannot undo that lock, where a lock on a file can be bypassed by
/// deleting the file and creating it again. `flock` locks belong to the open file description,
/// so a second open in the same process is refused too, and they are independent of the
/// POSIX record locks SQLite takes on its own files. `murmur.lock` is locked as well, which is
/// what earlier versions of Murmur (and the fallback where directories cannot be locked) rely
/// on.
struct DirLock {
    /// The locked directory; `None` where the platform or file system cannot lock one.
    _dir: Option<File>,
    /// The locked `murmur.lock`.
    _file: File,
}

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock> {
        let locked = || Error::Locked {
            path: dir.to_path_buf(),
        };
        let dir_handle = match lock_directory(dir)? {
            DirHold::Held(f) => Some(f),
            DirHold::Busy => return Err(locked()),
            DirHold::Unsupported => None,
        };
        let lock_path = dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(format!("cannot open {}", lock_path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(locked()),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(format!("cannot lock {}", lock_path.display()), e))
            }
        }
        Ok(DirLock {
            _dir: dir_handle,
            _file: file,
        })
    }
}

/// What [`lock_directory`] got.
enum DirHold {
    /// The directory, locked by this handle.
    Held(File),
    /// Another holder has it locked.
    Busy,
    /// Directories cannot be locked here (a file system without `flock`, a platform without
    /// directory handles): only `murmur.lock` is.
    Unsupported,
}

/// Locks the directory `dir` itself.
#[cfg(unix)]
fn lock_directory(dir: &Path) -> Result<DirHold> {
    let handle =
        File::open(dir).map_err(|e| io_error(format!("cannot open {}", dir.display()), e))?;
    match handle.try_lock() {
        Ok(()) => Ok(DirHold::Held(handle)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(DirHold::Busy),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(
                "cannot lock the data directory {} ({e}); relying on {LOCK_FILE} alone, which \
                 deleting that file defeats",
                dir.display()
            );
            Ok(DirHold::Unsupported)
        }
    }
}

#[cfg(not(unix))]
fn lock_directory(_dir: &Path) -> Result<DirHold> {
    Ok(DirHold::Unsupported)
}

/// The size of the file at `path`, 0 when there is none.
fn file_len(path: &Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_error(format!("cannot read {}", path.display()), e)),
    }
}

/// Whether `dir` holds a store to open (`false`: a new one is to be created), checked before
/// SQLite opens anything, since opening creates the file.
///
/// A database file of 0 bytes is refused: Murmur only ever puts a whole store under that name
/// ([`create`]), so an empty one lost its contents, and opening it as a new store would
/// silently start a new node, with a new ID, in place of the one that lived here. A store of
/// an earlier version killed before its first checkpoint has an empty file but its commits in
/// the write-ahead log beside it, and opens. A log without its database is refused as well.
fn existing_store(dir: &Path, db_path: &Path, log_path: &Path) -> Result<bool> {
    let corrupt = |detail: String| Error::Corrupt {
        path: dir.to_path_buf(),
        detail,
    };
    match std::fs::metadata(db_path) {
        Ok(m) if m.len() > 0 => Ok(true),
        Ok(_) if file_len(log_path)? > 0 => Ok(true),
        Ok(_) => Err(corrupt(format!(
            "{DB_FILE} is empty (0 bytes): the store of the node that lived in this directory \
             lost its contents; opening it would start a new node with a new ID"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if file_len(log_path)? > 0 {
                return Err(corrupt(format!(
                    "{DB_FILE} is missing but its write-ahead log {DB_FILE}-wal is not; move \
                     the log away too"
                )));
            }
            Ok(false)
        }
        Err(e) => Err(io_error(format!("cannot read {}", db_path.display()), e)),
    }
}

/// Creates a new store at `db_path` in one step: it is built under another name, synced, and
/// renamed into place, so that a file under [`DB_FILE`] always holds a whole store (what
/// [`existing_store`] relies on). The store is born with its schema and its node's secret key.
fn create(dir: &Path, db_path: &Path) -> Result<()> {
    let tmp = dir.join(NEW_DB_FILE);
    // Left over by a creation that was cut short: no node ever used it.
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = dir.join(format!("{NEW_DB_FILE}{suffix}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("cannot remove {}", p.display()), e)),
        }
    }
    let sql = |e| sql_error(dir, None, e);
    let conn = Connection::open(&tmp).map_err(sql)?;
    let build = || -> rusqlite::Result<()> {
        // Free pages go back to the file system after a history compaction (only takes effect
        // before the first table exists).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.execute_batch(&format!("BEGIN; {META_SCHEMA} {SCHEMA}"))?;
        conn.execute(
            "INSERT INTO meta(k, v) VALUES ('schema_version', ?1), ('secret_key', ?2)",
            params![
                &SCHEMA_VERSION.to_be_bytes()[..],
                &rand::random::<[u8; 32]>()[..]
            ],
        )?;
        conn.execute_batch("COMMIT")?;
        conn.pragma_update(None, "journal_mode", "WAL")
    };
    let built = build().map_err(|e| sql_error(dir, Some(&conn), e));
    conn.close().map_err(|(_, e)| sql(e))?;
    built?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(format!("cannot sync {}", tmp.display()), e))?;
    std::fs::rename(&tmp, db_path)
        .map_err(|e| io_error(format!("cannot create {}", db_path.display()), e))?;
    sync_dir(dir)
}

/// Syncs the directory entry of a file just renamed into `dir`.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(format!("cannot sync {}", dir.display()), e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
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
    /// Held while the store is open; released when dropped.
    _lock: DirLock,
}

/// What is needed to rebuild the document at open.
pub(crate) struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub changes: Vec<Vec<u8>>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, taking an exclusive lock on it. (Tests and
    /// fuzz targets; the replica opens it with [`Store::open_and`].)
    #[cfg(any(test, fuzzing))]
    pub fn open(dir: &Path, durability: Durability) -> Result<Store> {
        let (store, ()) = Self::open_and(dir, durability, |_| Ok(()))?;
        Ok(store)
    }

    /// Like [`Store::open`], and runs `load` on the open store while another thread builds the
    /// value index (a scan of every stored value, 30-50 ms at 100k values): the replica loads
    /// its document meanwhile (BENCHMARKS.md, W5). The open fails if either fails.
    ///
    /// Until both have succeeded nothing reaches the database file: commits stay in the
    /// write-ahead log (no checkpoint, not even when the connection closes), so a store found
    /// damaged (by SQLite, or by `load` when the document does not decode) is left as it was.
    /// Between them, the schema read at open, the document load and the value scan read every
    /// page but the free ones and the overflow pages of values larger than a page; damage there
    /// is reported as [`Error::Corrupt`] when the value is read. A full `PRAGMA quick_check`
    /// would read those too, at about twice the cost of the value scan (1.7 s against
    /// 0.4-0.9 s on a 140 MB store of 1 KB values, on a busy 2-core machine): not done.
    pub fn open_and<T>(
        dir: &Path,
        durability: Durability,
        load: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<(Store, T)> {
        let mut store = Self::open_unindexed(dir, durability)?;
        let reader = store.reader()?;
        let (scanned, out) = std::thread::scope(|s| {
            let scan = s.spawn(move || ValueIndex::scan(&reader));
            let out = load(&mut store);
            (scan.join(), out)
        });
        let map =
            scanned.map_err(|_| Error::Storage("the scan of stored values panicked".into()))??;
        let out = out?;
        store.index = ValueIndex(Arc::new(RwLock::new(map)));
        // Read whole: from now on the log is checkpointed into the database as usual.
        store
            .conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
            .map_err(store.sql())?;
        store
            .conn
            .pragma_update(None, "wal_autocheckpoint", 1000)
            .map_err(store.sql())?;
        Ok((store, out))
    }

    fn open_unindexed(dir: &Path, durability: Durability) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(format!("cannot create data directory {}", dir.display()), e))?;
        let lock = DirLock::take(dir)?;
        let db_path = dir.join(DB_FILE);
        let log_path = dir.join(format!("{DB_FILE}-wal"));
        if !existing_store(dir, &db_path, &log_path)? {
            create(dir, &db_path)?;
        }
        // Without SQLITE_OPEN_CREATE: the file was just found or created, and a file that has
        // gone since must not come back empty.
        let conn = Connection::open_with_flags(
            &db_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(dir, None, e))?;
        let store = Store {
            conn,
            index: ValueIndex::default(),
            durability,
            dir: dir.to_path_buf(),
            log_path,
            db_path,
            _lock: lock,
        };
        store.prepare()?;
        Ok(store)
    }

    /// Checks that the store can be read and is one this version knows, then readies it for
    /// writing (schema, migration). Writes nothing before the checks (see [`Store::open_and`]
    /// for what reaches the database file).
    fn prepare(&self) -> Result<()> {
        let conn = &self.conn;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(self.sql())?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(self.sql())?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(self.sql())?;
        // The first read of the file: garbage, a file that is not a database or a damaged
        // schema fail here.
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut s| {
                let names = s.query_map([], |r| r.get(0))?.collect();
                names
            })
            .map_err(self.sql())?;
        // SQLite falls back to reading a file it may not write: that would fail at the first
        // write instead.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(self.sql())? {
            return Err(read_only(&self.dir, &"it opens read-only"));
        }
        let empty = tables.is_empty();
        if !empty && !tables.iter().any(|t| t == "meta") {
            return Err(self.corrupt(format!(
                "not a Murmur database: it has tables ({}) but no meta table",
                tables.join(", ")
            )));
        }
        // The version is read before any other table is made: a store of a newer schema is
        // refused untouched.
        let version = if empty {
            None
        } else {
            self.meta_i64("schema_version")?
        };
        if let Some(v) = version.filter(|v| *v != SCHEMA_VERSION && *v != 3) {
            return Err(self.corrupt(format!(
                "schema version {v} is not supported by this version of Murmur ({SCHEMA_VERSION})"
            )));
        }
        if empty {
            // An empty database (what an earlier version left when killed as it created the
            // store): nothing to lose, made a store in place.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(self.sql())?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(self.sql())?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(self.sql())?;
        }
        // Commits write the log without syncing it; under `Durability::Full` the log is synced
        // after the commit instead ([`Store::sync`]), so that the replica can send a change to
        // its peers while the disk syncs it (BENCHMARKS.md, W2). Checkpoints sync the log
        // before they copy it into the database either way.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.sql())?;
        // SQLite's default 2 MB page cache thrashed in bulk catch-ups when values were keyed
        // by hash (schema 3); it still helps reads of many values. The cache grows only as
        // pages are used.
        conn.pragma_update(None, "cache_size", -16384)
            .map_err(self.sql())?;
        // Creates only what is missing: nothing in a store of this version.
        conn.execute_batch(&format!("{META_SCHEMA} {SCHEMA}"))
            .map_err(self.sql())?;
        match version {
            None => self.set_meta("schema_version", &SCHEMA_VERSION.to_be_bytes())?,
            Some(3) => self.migrate_from_3()?,
            Some(_) => {}
        }
        Ok(())
    }

    /// Explains a SQLite error on this store (see [`sql_error`]).
    fn sql(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| sql_error(&self.dir, Some(&self.conn), e)
    }

    /// Opens a read-only connection for value reads outside the writer thread.
    pub fn reader(&self) -> Result<Reader> {
        let conn = Connection::open_with_flags(
            &self.db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(&self.dir, None, e))?;
        let reader = Reader {
            conn,
            index: self.index.clone(),
            dir: self.dir.clone(),
        };
        reader
            .conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(reader.sql())?;
        Ok(reader)
    }

    /// Schema 3 kept values in `blobs`, keyed by hash: moves them to `vals` (in hash order,
    /// which is as good as any) in one transaction. Nothing else changed.
    fn migrate_from_3(&self) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.sql())?;
        let has_blobs: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'blobs'",
                [],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        if has_blobs {
            tx.execute_batch(
                "INSERT INTO vals(hash, data) SELECT hash, data FROM blobs ORDER BY hash;
                 DROP TABLE blobs;",
            )
            .map_err(self.sql())?;
        }
        tx.execute(
            "UPDATE meta SET v = ?1 WHERE k = 'schema_version'",
            [&SCHEMA_VERSION.to_be_bytes()[..]],
        )
        .map_err(self.sql())?;
        tx.commit().map_err(self.sql())?;
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
        self.conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()
            .map_err(self.sql())
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

    pub fn set_meta(&self, k: &str, v: &[u8]) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )
            .map_err(self.sql())?;
        self.sync()
    }

    /// The node's 32-byte secret key: stored when the store was created (stores of earlier
    /// versions get one, random, on first use).
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
        let load = || -> rusqlite::Result<StoredDoc> {
            let snapshot = self
                .conn
                .query_row("SELECT data FROM snapshot WHERE id = 1", [], |r| r.get(0))
                .optional()?;
            let mut stmt = self.conn.prepare("SELECT data FROM changes ORDER BY seq")?;
            let changes = stmt
                .query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(StoredDoc { snapshot, changes })
        };
        load().map_err(self.sql())
    }

    /// Whether the value with `hash` is stored (committed).
    pub fn has_blob(&self, hash: &[u8]) -> bool {
        self.index.rowid(hash).is_some()
    }

    /// Reads one blob.
    pub fn blob(&self, hash: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.index.rowid(hash) {
            Some(id) => read_value(&self.conn, id, hash).map_err(self.sql()),
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
        let tx = self.conn.unchecked_transaction().map_err(self.sql())?;
        for (i, h) in hashes.iter().enumerate() {
            let Some(id) = self.index.rowid(h) else {
                continue;
            };
            if let Some(v) = read_value(&tx, id, h).map_err(self.sql())? {
                if !f(h, v) {
                    tx.finish().map_err(self.sql())?;
                    return Ok(i + 1);
                }
            }
        }
        tx.finish().map_err(self.sql())?;
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
        let mut scan = || -> rusqlite::Result<bool> {
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
        };
        scan().map_err(self.sql())
    }

    /// Reads every stored blob in the order they were stored, calling `f` with each hash and
    /// value until it returns false: one sequential scan, several times faster than looking
    /// each up when most are wanted. (Tests read a whole store with it.)
    #[cfg(test)]
    pub fn scan_blobs(&self, mut f: impl FnMut([u8; 16], Vec<u8>) -> bool) -> Result<()> {
        let mut scan = || -> rusqlite::Result<()> {
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
        };
        scan().map_err(self.sql())
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
        let rows = self
            .conn
            .prepare(sql)
            .and_then(|mut stmt| {
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>();
                rows
            })
            .map_err(self.sql())?;
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
        // Unchecked: `&mut self` already makes it the only transaction, and the connection
        // stays reachable to explain an error (see [`sql_error`]).
        Ok(Tx {
            tx: self.conn.unchecked_transaction().map_err(self.sql())?,
            conn: &self.conn,
            dir: &self.dir,
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
    conn: &'a Connection,
    dir: &'a Path,
    durability: Durability,
    log_path: &'a Path,
    index: &'a ValueIndex,
    /// Values inserted in this transaction (hash to rowid): the index learns them on commit.
    added: HashMap<Hash, i64>,
    /// Values of the index deleted in this transaction: the index forgets them on commit.
    removed: HashSet<Hash>,
}

impl Tx<'_> {
    /// Explains a SQLite error in this transaction (see [`sql_error`]).
    fn sql(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| sql_error(self.dir, Some(self.conn), e)
    }

    pub fn insert_change(&self, data: &[u8]) -> Result<()> {
        self.tx
            .prepare_cached("INSERT INTO changes(data) VALUES (?1)")
            .and_then(|mut s| s.execute([data]))
            .map_err(self.sql())?;
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
            .prepare_cached("INSERT INTO vals(hash, data) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![hash, data]))
            .map_err(self.sql())?;
        self.added.insert(h, self.tx.last_insert_rowid());
        Ok(())
    }

    /// Deletes the value with `hash`, if stored.
    fn delete_blob(&mut self, h: &Hash) -> Result<()> {
        let Some(id) = self.rowid(h) else {
            return Ok(());
        };
        self.tx
            .prepare_cached("DELETE FROM vals WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(self.sql())?;
        if self.added.remove(h).is_none() {
            self.removed.insert(*h);
        }
        Ok(())
    }

    /// Replaces the snapshot with `data` and drops every change row (they are all in it).
    pub fn replace_snapshot(&self, data: &[u8]) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO snapshot(id, data) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                [data],
            )
            .map_err(self.sql())?;
        self.tx
            .execute("DELETE FROM changes", [])
            .map_err(self.sql())?;
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
            .prepare_cached("DELETE FROM vals WHERE length(hash) != 16")
            .and_then(|mut s| s.execute([]))
            .map_err(self.sql())?;
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
        self.tx
            .execute(
                "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    pub fn set_peer_sync(&self, peer: &[u8; 32], state: &[u8]) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO peer_sync(peer, state) VALUES (?1, ?2) ON CONFLICT(peer) DO UPDATE SET state = excluded.state",
                params![&peer[..], state],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    pub fn set_peer_addr(&self, peer: &[u8; 32], addr: &[u8]) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO peer_addrs(peer, addr) VALUES (?1, ?2) ON CONFLICT(peer) DO UPDATE SET addr = excluded.addr",
                params![&peer[..], addr],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Records the document's new epoch; the per-peer sync states of the old one are void.
    pub fn set_epoch(&self, epoch: &crate::history::EpochId) -> Result<()> {
        let bytes = postcard::to_stdvec(epoch)
            .map_err(|e| Error::Storage(format!("cannot encode epoch: {e}")))?;
        self.set_meta("epoch", &bytes)?;
        self.tx
            .execute("DELETE FROM peer_sync", [])
            .map_err(self.sql())?;
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
        let (dir, conn) = (self.dir, self.conn);
        self.tx
            .commit()
            .map_err(|e| sql_error(dir, Some(conn), e))?;
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
    dir: PathBuf,
}

impl Reader {
    /// Explains a SQLite error on this connection (see [`sql_error`]).
    fn sql(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| sql_error(&self.dir, Some(&self.conn), e)
    }

    /// Frees this connection's page cache (see [`Store::release_memory`]).
    pub fn release_memory(&self) {
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
    }

    /// Reads one stored value (committed values only).
    pub fn blob(&self, hash: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.index.rowid(hash) {
            Some(id) => read_value(&self.conn, id, hash).map_err(self.sql()),
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
    fn deleting_the_lock_file_does_not_let_a_second_open_in() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), Durability::Full).unwrap();
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        match Store::open(dir.path(), Durability::Full) {
            Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second store opened once murmur.lock was deleted"),
        }
        drop(first);
        Store::open(dir.path(), Durability::Full).expect("lock released on drop");
    }

    #[test]
    fn an_empty_database_file_is_refused_where_a_node_lived() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        // A new directory gets a store, born whole with its key: never an empty file.
        let key = Store::open(dir.path(), Durability::Full)
            .unwrap()
            .secret_key()
            .unwrap();
        assert!(std::fs::metadata(&db).unwrap().len() > 0);
        assert!(!dir.path().join(NEW_DB_FILE).exists());
        // Truncated to 0 bytes: refused, not a new node with a new ID.
        std::fs::File::options()
            .write(true)
            .open(&db)
            .unwrap()
            .set_len(0)
            .unwrap();
        match Store::open(dir.path(), Durability::Full) {
            Err(Error::Corrupt { detail, .. }) => {
                assert!(detail.contains("empty (0 bytes)"), "{detail}")
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(mut s) => panic!(
                "an empty file opened as a new node (same key: {})",
                s.secret_key().unwrap() == key
            ),
        }
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was");
        // Moved away (what the error advises): a new store.
        std::fs::remove_file(&db).unwrap();
        let mut fresh = Store::open(dir.path(), Durability::Full).unwrap();
        assert_ne!(fresh.secret_key().unwrap(), key);
    }

    #[test]
    fn a_log_without_its_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Full).unwrap();
        store.set_meta("x", b"y").unwrap();
        // Copied while open, the log holds the commit.
        let log = std::fs::read(&store.log_path).unwrap();
        assert!(!log.is_empty());
        drop(store);
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        std::fs::write(dir.path().join(format!("{DB_FILE}-wal")), &log).unwrap();
        match Store::open(dir.path(), Durability::Full) {
            Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("missing"), "{detail}"),
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("a log without its database opened"),
        }
        assert!(!dir.path().join(DB_FILE).exists());
    }

    #[test]
    fn an_empty_database_made_by_an_earlier_version_becomes_a_store() {
        let dir = tempfile::tempdir().unwrap();
        // What an earlier version left when killed right after SQLite created the file.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        drop(conn);
        let mut store = Store::open(dir.path(), Durability::Full).unwrap();
        assert_eq!(
            store.meta_i64("schema_version").unwrap(),
            Some(SCHEMA_VERSION)
        );
        store.secret_key().unwrap();
    }

    #[test]
    fn sqlite_errors_are_corrupt_only_for_a_damaged_file() {
        use rusqlite::ffi;
        let dir = Path::new("/data");
        let err = |code| {
            sql_error(
                dir,
                None,
                rusqlite::Error::SqliteFailure(ffi::Error::new(code), None),
            )
        };
        for code in [
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
            ffi::SQLITE_CORRUPT_INDEX,
        ] {
            assert!(matches!(err(code), Error::Corrupt { .. }), "{code}");
        }
        let storage = |code, says: &str| match err(code) {
            e @ Error::Storage(_) => {
                let m = e.to_string();
                assert!(m.contains(says), "{code}: {m}");
                assert_eq!(m.matches("storage error").count(), 1, "{m}");
            }
            e => panic!("{code}: expected Storage, got {e}"),
        };
        storage(ffi::SQLITE_FULL, "full");
        storage(ffi::SQLITE_FULL, "free some space");
        storage(ffi::SQLITE_READONLY, "read-only");
        storage(ffi::SQLITE_READONLY_DBMOVED, "read-only");
        storage(ffi::SQLITE_PERM, "access");
        storage(ffi::SQLITE_BUSY, "locked by another connection");
        storage(ffi::SQLITE_LOCKED, "locked by another connection");
        storage(ffi::SQLITE_BUSY_SNAPSHOT, "close it and retry");
        storage(ffi::SQLITE_CANTOPEN, "cannot open");
        storage(ffi::SQLITE_IOERR_WRITE, "failed");
        storage(ffi::SQLITE_NOMEM, "out of memory");
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
