//! The embedded persist tier: a redb file that mirrors the memory tier.
//!
//! Requests never wait on it: they hand copies to a bounded channel with
//! `try_send`, and one writer thread batches them into transactions. A full
//! channel, a full disk or any write error drops the write, logs (at most
//! once a minute) and counts it; the request has long been answered. A file
//! that cannot be opened or read (corrupt, wrong format) is moved aside and
//! graceway starts with an empty one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::stored::{self, Decoded, StoredResponse};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("last_good_v1");
const QUEUE: usize = 4096;

enum Op {
    Put(Arc<str>, Arc<StoredResponse>),
    Delete(Arc<str>),
}

/// Handle the request path and the memory tier use; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Op>,
    db: Arc<Database>,
    dropped: Arc<AtomicU64>,
    pub path: PathBuf,
}

impl Writer {
    /// Opens (or creates) the file and starts the writer thread. A file that
    /// cannot be opened is renamed to `<path>.corrupt-<unix time>`.
    pub fn open(path: &Path) -> Result<Writer, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let db = match open_checked(path) {
            Ok(db) => db,
            Err(e) => {
                let aside = path.with_extension(format!(
                    "corrupt-{}",
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                ));
                log::error!(
                    "persist file {} is unreadable ({e}); moved to {} and starting empty",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside)
                    .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
                open_checked(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?
            }
        };
        let db = Arc::new(db);
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let (wdb, wdropped) = (db.clone(), dropped.clone());
        std::thread::Builder::new()
            .name("graceway-persist".into())
            .spawn(move || write_loop(&wdb, rx, &wdropped))
            .map_err(|e| format!("cannot start the persist writer: {e}"))?;
        Ok(Writer {
            tx,
            db,
            dropped,
            path: path.to_path_buf(),
        })
    }

    pub fn put(&self, key: &Arc<str>, copy: &Arc<StoredResponse>) {
        self.send(Op::Put(key.clone(), copy.clone()));
    }

    pub fn delete(&self, key: &Arc<str>) {
        self.send(Op::Delete(key.clone()));
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

    /// Every decodable entry; undecodable ones are deleted.
    pub fn load_all(&self) -> Vec<(Arc<str>, Decoded)> {
        let mut out = Vec::new();
        let mut bad: Vec<String> = Vec::new();
        let mut read = || -> Result<(), redb::Error> {
            let txn = self.db.begin_read()?;
            let table = match txn.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for row in table.iter()? {
                let (k, v) = row?;
                match stored::decode(v.value()) {
                    Some(d) => out.push((Arc::from(k.value()), d)),
                    None => bad.push(k.value().to_string()),
                }
            }
            Ok(())
        };
        if let Err(e) = read() {
            log::error!(
                "persist file {}: reading failed, starting without its copies: {e}",
                self.path.display()
            );
        }
        if !bad.is_empty() {
            log::warn!(
                "persist file {}: {} undecodable entries dropped",
                self.path.display(),
                bad.len()
            );
            for k in bad {
                self.delete(&Arc::from(k.as_str()));
            }
        }
        out
    }
}

/// Opens the database and reads its table once, so that a corrupt file is
/// found now and not on the first write.
fn open_checked(path: &Path) -> Result<Database, String> {
    let db = Database::create(path).map_err(|e| e.to_string())?;
    {
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
            for row in table.iter().map_err(|e| e.to_string())? {
                row.map_err(|e| e.to_string())?;
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
    }
    Ok(db)
}

fn write_loop(db: &Database, rx: Receiver<Op>, dropped: &AtomicU64) {
    let mut last_error_log: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                for op in &batch {
                    match op {
                        Op::Put(k, c) => {
                            table.insert(&**k, stored::encode(c).as_slice())?;
                        }
                        Op::Delete(k) => {
                            table.remove(&**k)?;
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            dropped.fetch_add(n, Ordering::Relaxed);
            if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                log::error!(
                    "persist write failed ({n} changes dropped; requests are unaffected): {e}"
                );
                last_error_log = Some(Instant::now());
            }
        }
    }
}
