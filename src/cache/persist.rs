//! The embedded persist tier: a redb file that mirrors the memory tier.
//!
//! Requests never wait on it: they hand copies to a bounded channel with
//! `try_send`, and one writer thread batches them into transactions. A full
//! channel, a full disk or any write error drops the write, logs (at most
//! once a minute) and counts it; the request has long been answered. A file
//! that cannot be opened or read (corrupt, wrong format) is moved aside and
//! graceway starts with an empty one.
//!
//! A graceful upgrade runs two processes side by side, and redb locks its
//! file: the new process finds it held by the old one, waits (a background
//! thread retries every 200 ms), and opens it once the old process has
//! drained, flushed its queue and let go ([`Writer::close`]); it then loads
//! the copies the old process kept and carries on writing. So an upgrade
//! keeps the last-good cache, and persistence stays on afterwards.
//!
//! The table `last_good_v2` maps a [`StoreKey`] (serialized with postcard:
//! the upstream and SHA-256 digests, never a path) to a record
//! ([`record`], versioned). A file written before keys were typed is
//! rewritten in this form when it is opened ([`super::migrate`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::key::StoreKey;
use super::record;
use super::stored::{CachedResponse, Recorded};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("last_good_v2");
const QUEUE: usize = 4096;

enum Op {
    Put(Arc<CachedResponse>),
    /// Removes the row of a copy that left the memory tier, unless it
    /// holds a copy stored after `.1` (one kept since, under the same key).
    Delete(StoreKey, SystemTime),
    /// Commit what is queued, release the file, then answer.
    Close(SyncSender<()>),
}

/// The open database, shared by the writer thread and the start-up reads;
/// `None` while another process holds the file, and after [`Writer::close`].
type Slot = Arc<Mutex<Option<Arc<Database>>>>;

/// Handle the request path and the memory tier use; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Op>,
    /// The receiving end until [`Writer::start`] hands it to the thread.
    rx: Arc<Mutex<Option<Receiver<Op>>>>,
    db: Slot,
    dropped: Arc<AtomicU64>,
    pub path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writer {
    /// Opens (or creates) the file and starts the writer thread. A file that
    /// cannot be opened is renamed to `<path>.corrupt-<unix time>`.
    pub fn open(path: &Path) -> Result<Writer, PersistError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| PersistError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let db = match open_checked(path) {
            Ok(db) => Some(db),
            Err(OpenError::InUse) => {
                // Another process holds it: the old process of a graceful
                // upgrade. Its file is not corrupt: wait for it (`start`).
                log::info!(
                    "persist file {} is held by another process (the old one of a graceful upgrade?): it is opened, and its copies loaded, once that process lets go",
                    path.display()
                );
                None
            }
            Err(e) => Some(replace_damaged(path, &e)?),
        };
        let db = Arc::new(Mutex::new(db.map(Arc::new)));
        let (tx, rx) = sync_channel(QUEUE);
        Ok(Writer {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
            db,
            dropped: Arc::new(AtomicU64::new(0)),
            path: path.to_path_buf(),
        })
    }

    /// Starts the writer thread. Called once the process that will serve is
    /// running (after Pingora's daemon fork, which keeps no threads); writes
    /// queued before then wait in the channel. When another process holds
    /// the file, the thread first waits for it, then calls `on_open` (which
    /// loads the copies the other process kept) and starts writing.
    pub fn start(&self, on_open: impl FnOnce() + Send + 'static) {
        let Some(rx) = lock(&self.rx).take() else {
            return;
        };
        let (slot, dropped, path) = (self.db.clone(), self.dropped.clone(), self.path.clone());
        let spawned = std::thread::Builder::new()
            .name("graceway-persist".into())
            .spawn(move || {
                if lock(&slot).is_none() {
                    loop {
                        std::thread::sleep(Duration::from_millis(200));
                        match open_checked(&path) {
                            Ok(db) => {
                                *lock(&slot) = Some(Arc::new(db));
                                log::info!(
                                    "persist file {} opened: the other process let go",
                                    path.display()
                                );
                                on_open();
                                break;
                            }
                            Err(OpenError::InUse) => continue,
                            Err(e) => match replace_damaged(&path, &e) {
                                Ok(db) => {
                                    *lock(&slot) = Some(Arc::new(db));
                                    break;
                                }
                                Err(e) => {
                                    log::error!(
                                        "persist file {}: {e}; copies stay in memory only",
                                        path.display()
                                    );
                                    return;
                                }
                            },
                        }
                    }
                }
                write_loop(&slot, &path, rx, &dropped)
            });
        if let Err(e) = spawned {
            log::error!("cannot start the persist writer, copies stay in memory only: {e}");
        }
    }

    /// Whether the file is open (not waiting for another process, not closed).
    pub fn is_open(&self) -> bool {
        lock(&self.db).is_some()
    }

    /// Commits every queued write and releases the file (at exit, so that
    /// the next process of an upgrade can open it). Waits at most `limit`.
    pub fn close(&self, limit: Duration) {
        if !self.is_open() {
            return;
        }
        if lock(&self.rx).is_some() {
            // The writer never started: nothing is queued that must stay.
            *lock(&self.db) = None;
            return;
        }
        let deadline = Instant::now() + limit;
        let (ack_tx, ack_rx) = sync_channel(1);
        let mut op = Op::Close(ack_tx);
        loop {
            match self.tx.try_send(op) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    op = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    log::warn!(
                        "persist file {}: the writer did not take the close in time",
                        self.path.display()
                    );
                    return;
                }
            }
        }
        if ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            log::warn!(
                "persist file {}: queued writes not flushed in {limit:?}",
                self.path.display()
            );
        }
    }

    /// Queues a copy's row (under its [`StoreKey`]).
    pub fn put(&self, copy: &Arc<CachedResponse>) {
        self.send(Op::Put(copy.clone()));
    }

    /// Queues the removal of a copy's row (kept if a newer copy replaced it).
    pub fn delete(&self, copy: &CachedResponse) {
        self.send(Op::Delete(copy.store.clone(), copy.recorded.stored_at));
    }

    fn send(&self, op: Op) {
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes dropped because the queue was full or a write failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Every decodable entry; undecodable ones are deleted. A file that
    /// fails (or makes redb panic) while being read is moved aside and
    /// replaced by an empty one: graceway starts without its copies.
    pub fn load_all(&self) -> Vec<(StoreKey, Recorded)> {
        let Some(db) = lock(&self.db).clone() else {
            return Vec::new();
        };
        type Read = (Vec<(StoreKey, Recorded)>, Vec<Vec<u8>>);
        let read = || -> Result<Read, OpenError> {
            let (mut out, mut bad) = (Vec::new(), Vec::new());
            let txn = db.begin_read().map_err(redb::Error::from)?;
            let table = match txn.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((out, bad)),
                Err(e) => return Err(redb::Error::from(e).into()),
            };
            for row in table.iter().map_err(redb::Error::from)? {
                let (k, v) = row.map_err(redb::Error::from)?;
                match (StoreKey::from_bytes(k.value()), record::decode(v.value())) {
                    (Some(key), Some(d)) => out.push((key, d)),
                    _ => bad.push(k.value().to_vec()),
                }
            }
            Ok((out, bad))
        };
        let (out, bad) = match contain(read) {
            Ok(found) => found,
            Err(e) => {
                drop(db);
                let mut slot = lock(&self.db);
                *slot = None;
                match replace_damaged(&self.path, &e) {
                    Ok(fresh) => *slot = Some(Arc::new(fresh)),
                    Err(e) => log::error!(
                        "persist file {}: {e}; copies stay in memory only",
                        self.path.display()
                    ),
                }
                return Vec::new();
            }
        };
        if !bad.is_empty() {
            log::warn!(
                "persist file {}: {} undecodable entries dropped",
                self.path.display(),
                bad.len()
            );
            self.remove_rows(&bad);
        }
        out
    }

    /// Deletes keys in one transaction on the calling thread (start-up).
    pub fn remove_now(&self, keys: &[StoreKey]) {
        let rows: Vec<Vec<u8>> = keys.iter().map(StoreKey::to_bytes).collect();
        self.remove_rows(&rows);
    }

    fn remove_rows(&self, keys: &[Vec<u8>]) {
        if keys.is_empty() {
            return;
        }
        let Some(db) = lock(&self.db).clone() else {
            return;
        };
        let run = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                for k in keys {
                    table.remove(k.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        if let Err(e) = run() {
            log::error!("persist file {}: cleanup failed: {e}", self.path.display());
        }
    }
}

/// The persist tier in `/status` (`cache.persist`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PersistView {
    pub path: String,
    pub open: bool,
    pub dropped_writes: u64,
}

/// Why the database file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("in use by another process")]
    InUse,
    #[error(transparent)]
    Redb(#[from] redb::Error),
    /// redb panicked on the file's contents (seen with random damage).
    #[error("the database library failed on its contents: {0}")]
    Panicked(String),
}

/// Runs `f`, turning a panic inside it (redb can panic on a damaged file
/// instead of answering an error) into [`OpenError::Panicked`].
fn contain<T>(f: impl FnOnce() -> Result<T, OpenError>) -> Result<T, OpenError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(OpenError::Panicked(why))
    })
}

/// The name a damaged file is moved to: `<path>.corrupt-<unix time>`.
fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(
        ".corrupt-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    PathBuf::from(name)
}

/// A file that cannot be opened or read: moved aside (one WARN with the
/// reason, counted in `graceway_cache_persist_damaged_total`), and an
/// empty file created in its place.
fn replace_damaged(path: &Path, why: &OpenError) -> Result<Database, PersistError> {
    let aside = aside_path(path);
    log::warn!(
        "persist file {} is damaged ({why}); moved to {} and starting with an empty persist tier",
        path.display(),
        aside.display()
    );
    crate::metrics::metrics().cache_persist_damaged_total.inc();
    std::fs::rename(path, &aside).map_err(|source| PersistError::MoveAside {
        path: path.to_path_buf(),
        source,
    })?;
    open_checked(path).map_err(|source| PersistError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Why the persist tier could not be opened (persistence is then off).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move {} aside: {source}", path.display())]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create { path: PathBuf, source: OpenError },
}

/// Opens the database and reads its table once, so that a corrupt file is
/// found now and not on the first write. A panic inside redb is an error.
fn open_checked(path: &Path) -> Result<Database, OpenError> {
    contain(|| {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::InUse),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        {
            let txn = db.begin_write().map_err(redb::Error::from)?;
            let migrated = super::migrate::old_table(&txn, TABLE)?;
            {
                let table = txn.open_table(TABLE).map_err(redb::Error::from)?;
                for row in table.iter().map_err(redb::Error::from)? {
                    let (k, v) = row.map_err(redb::Error::from)?;
                    // Touch every byte redb hands out, as `load_all` will.
                    let _ = (k.value().len(), v.value().len());
                }
            }
            txn.commit().map_err(redb::Error::from)?;
            if let Some(n) = migrated {
                log::info!(
                    "persist file {}: {n} copies of the older format rewritten in the current one",
                    path.display()
                );
            }
        }
        Ok(db)
    })
}

fn write_loop(slot: &Slot, path: &Path, rx: Receiver<Op>, dropped: &AtomicU64) {
    let Some(mut db) = lock(slot).clone() else {
        return;
    };
    let mut last_error_log: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut close = None;
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Some(i) = batch.iter().position(|op| matches!(op, Op::Close(_))) {
            // Everything before the close is written; anything after it
            // (a late request) is dropped with the file.
            for op in batch.drain(i..) {
                match op {
                    Op::Close(ack) => close = close.or(Some(ack)),
                    _ => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let n = batch.len() as u64;
        let result = contain(|| {
            let txn = db.begin_write().map_err(redb::Error::from)?;
            {
                let mut table = txn.open_table(TABLE).map_err(redb::Error::from)?;
                for op in &batch {
                    match op {
                        Op::Put(c) => {
                            let k = c.store.to_bytes();
                            table
                                .insert(k.as_slice(), record::encode(&c.recorded).as_slice())
                                .map_err(redb::Error::from)?;
                        }
                        Op::Delete(key, at) => {
                            let k = key.to_bytes();
                            let older = table
                                .get(k.as_slice())
                                .map_err(redb::Error::from)?
                                .map(|v| record::stored_at(v.value()).is_none_or(|t| t <= *at));
                            if older == Some(true) {
                                table.remove(k.as_slice()).map_err(redb::Error::from)?;
                            }
                        }
                        Op::Close(_) => {}
                    }
                }
            }
            txn.commit().map_err(redb::Error::from)?;
            Ok(())
        });
        if let Err(e @ OpenError::Panicked(_)) = &result {
            // The file was damaged under us: a fresh one from here on.
            dropped.fetch_add(n, Ordering::Relaxed);
            *lock(slot) = None;
            drop(db);
            match replace_damaged(path, e) {
                Ok(fresh) => {
                    db = Arc::new(fresh);
                    *lock(slot) = Some(db.clone());
                }
                Err(e) => {
                    log::error!(
                        "persist file {}: {e}; copies stay in memory only",
                        path.display()
                    );
                    if let Some(ack) = close {
                        let _ = ack.send(());
                    }
                    return;
                }
            }
        } else if let Err(e) = result {
            dropped.fetch_add(n, Ordering::Relaxed);
            if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                log::error!(
                    "persist write failed ({n} changes dropped; requests are unaffected): {e}"
                );
                last_error_log = Some(Instant::now());
            }
        }
        if let Some(ack) = close {
            *lock(slot) = None;
            drop(db);
            let _ = ack.send(());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::sample;
    use super::*;

    fn copy(at: SystemTime, key: &StoreKey) -> Arc<CachedResponse> {
        let mut r = sample();
        r.stored_at = at;
        let owner = Arc::new(crate::generation::UpstreamStatus::new("u"));
        Arc::new(CachedResponse::new(r, owner, key.clone()))
    }

    #[test]
    fn a_delete_spares_a_newer_copy_under_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let key = StoreKey::primary_of("u", "/p");
        let now = SystemTime::now();
        let w = Writer::open(&path).unwrap();
        w.start(|| {});
        let (old, new) = (copy(now - Duration::from_secs(60), &key), copy(now, &key));
        w.put(&new);
        w.delete(&old);
        w.close(Duration::from_secs(5));
        drop(w);
        let w = Writer::open(&path).unwrap();
        assert_eq!(w.load_all().len(), 1, "the newer copy stays");
        w.start(|| {});
        w.delete(&new);
        w.close(Duration::from_secs(5));
        drop(w);
        assert!(Writer::open(&path).unwrap().load_all().is_empty());
    }
}
