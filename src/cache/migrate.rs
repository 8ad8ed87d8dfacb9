//! Reading a persist file written before keys were typed: its table
//! `last_good_v1` (keys as `"\n"`-joined strings, in the hashed or the
//! older raw form; records in version 1) is read once, when the file is
//! opened, rewritten into the current table and dropped, in the same
//! transaction as the open's check (so a crash leaves either form whole).

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::key::StoreKey;
use super::record;

/// The table of files written before keys were typed (read once, see the
/// module doc).
pub(super) const OLD_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("last_good_v1");

/// Moves the rows of [`OLD_TABLE`] into `into` (the persist file's table): each key read in
/// either of its string forms ([`StoreKey::from_legacy`]), each record
/// re-encoded in the current version, anything undecodable dropped; then
/// drops the old table. `None` when there was none. A row already in the
/// new table under the same key is newer and stays.
pub(super) fn old_table(
    txn: &WriteTransaction,
    into: TableDefinition<&[u8], &[u8]>,
) -> Result<Option<usize>, redb::Error> {
    let found = txn
        .list_tables()
        .map_err(redb::Error::from)?
        .any(|t| t.name() == OLD_TABLE.name());
    if !found {
        return Ok(None);
    }
    let mut moved = 0;
    {
        let old = txn.open_table(OLD_TABLE).map_err(redb::Error::from)?;
        let mut new = txn.open_table(into).map_err(redb::Error::from)?;
        for row in old.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            let (Some(key), Some(rec)) =
                (StoreKey::from_legacy(k.value()), record::decode(v.value()))
            else {
                continue;
            };
            let key = key.to_bytes();
            if new
                .get(key.as_slice())
                .map_err(redb::Error::from)?
                .is_none()
            {
                new.insert(key.as_slice(), record::encode(&rec).as_slice())
                    .map_err(redb::Error::from)?;
                moved += 1;
            }
        }
    }
    txn.delete_table(OLD_TABLE).map_err(redb::Error::from)?;
    Ok(Some(moved))
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::{encode_v1, sample};
    use super::*;
    use crate::cache::persist::Writer;
    use redb::{Database, ReadableDatabase};
    use std::time::Duration;

    #[test]
    fn the_old_table_is_read_once_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let hashed = StoreKey::primary_of("u", "/old?x=1");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(OLD_TABLE).unwrap();
                let v1 = encode_v1(&sample());
                t.insert(hashed.legacy().as_str(), v1.as_slice()).unwrap();
                t.insert("u\n/raw?y=2", v1.as_slice()).unwrap();
                t.insert("u\n/garbage", &b"\x01 not a record"[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let w = Writer::open(&path).unwrap();
        let mut found = w.load_all();
        found.sort_by_key(|a| a.0.primary);
        let mut want = vec![hashed, StoreKey::primary_of("u", "/raw?y=2")];
        want.sort_by_key(|a| a.primary);
        assert_eq!(found.iter().map(|f| f.0.clone()).collect::<Vec<_>>(), want);
        assert!(found.iter().all(|f| f.1.body == sample().body));
        w.close(Duration::from_secs(5));
        drop(w);
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(names, ["last_good_v2"]);
        let t = txn
            .open_table(TableDefinition::<&[u8], &[u8]>::new("last_good_v2"))
            .unwrap();
        for row in t.iter().unwrap() {
            let (_, v) = row.unwrap();
            assert_eq!(v.value()[0], record::FORMAT_VERSION, "rewritten");
        }
    }
}
