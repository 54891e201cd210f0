//! Where the simulated providers keep their trades, so that a restart of the node (or of
//! `paygate sim`) looks, from outside, like a provider that never restarted: a trade
//! opened before it can still be paid, a payment taken before it is still there.
//!
//! One sled database per simulator (`<data_dir>/sim`, `<data_dir>/sandbox`), a value per
//! book or trade, encoded with postcard. What a buyer or the gateway was told is written
//! through before the answer; sled's own flush covers the rest within half a second.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A simulator's database.
#[derive(Clone)]
pub struct SimStore {
    db: sled::Db,
}

impl SimStore {
    /// Opens (or creates) the store at `dir`.
    pub fn open(dir: &Path) -> Result<SimStore, String> {
        let config = sled::Config::new().path(dir).flush_every_ms(Some(500));
        let db = crate::storage::open_sled(&config).map_err(|e| format!("simulator store {}: {e}", dir.display()))?;
        Ok(SimStore { db })
    }

    /// A store that lives in memory only (benchmarks).
    pub fn in_memory() -> Result<SimStore, String> {
        let db = sled::Config::new().temporary(true).open().map_err(|e| format!("simulator store: {e}"))?;
        Ok(SimStore { db })
    }

    /// The whole book stored under `name`, or an empty one.
    pub fn book<T: Serialize + DeserializeOwned + Default>(&self, name: &str) -> Result<Persisted<T>, String> {
        let state = match self.db.get(name.as_bytes()).map_err(|e| e.to_string())? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| format!("simulator book {name}: {e}"))?,
            None => T::default(),
        };
        Ok(Persisted { state: Mutex::new(state), db: self.db.clone(), key: name.to_owned() })
    }

    /// A table of values by key, in its own tree.
    pub fn table<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Table<T>, String> {
        let tree = self.db.open_tree(name).map_err(|e| e.to_string())?;
        Ok(Table { tree, db: self.db.clone(), _values: PhantomData })
    }
}

/// A book held in memory and written back whole after every change.
pub struct Persisted<T: Serialize> {
    state: Mutex<T>,
    db: sled::Db,
    key: String,
}

impl<T: Serialize> Persisted<T> {
    /// The book, locked; a change made through the guard is written when it is dropped.
    pub fn lock(&self) -> BookGuard<'_, T> {
        let guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        BookGuard { guard, owner: self, changed: false }
    }
}

/// A locked book; writes it back, durably, if it was changed.
pub struct BookGuard<'a, T: Serialize> {
    guard: MutexGuard<'a, T>,
    owner: &'a Persisted<T>,
    changed: bool,
}

impl<T: Serialize> Deref for BookGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: Serialize> DerefMut for BookGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changed = true;
        &mut self.guard
    }
}

impl<T: Serialize> Drop for BookGuard<'_, T> {
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        let written = postcard::to_stdvec(&*self.guard)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.owner.db.insert(self.owner.key.as_bytes(), bytes).map_err(|e| e.to_string()))
            .and_then(|_| self.owner.db.flush().map(|_| ()).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::error!(book = %self.owner.key, error = %e, "the simulator could not store its book");
        }
    }
}

/// Values by key, written one at a time.
pub struct Table<T> {
    tree: sled::Tree,
    db: sled::Db,
    _values: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// Every stored value with its key; unreadable ones are logged and left out.
    pub fn all(&self) -> Vec<(String, T)> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let decoded = item.map_err(|e| e.to_string()).and_then(|(k, v)| {
                let key = String::from_utf8(k.to_vec()).map_err(|e| e.to_string())?;
                Ok((key, postcard::from_bytes(&v).map_err(|e| e.to_string())?))
            });
            match decoded {
                Ok(kv) => out.push(kv),
                Err(e) => tracing::error!(error = %e, "a stored simulator value is unreadable"),
            }
        }
        out
    }

    /// Stores `value` under `key`; on disk within sled's flush interval.
    pub fn put(&self, key: &str, value: &T) {
        if let Err(e) = self.write(key, value) {
            tracing::error!(key, error = %e, "the simulator could not store a value");
        }
    }

    /// Stores `value` under `key` and makes it durable before returning.
    pub fn put_durably(&self, key: &str, value: &T) {
        if let Err(e) = self.write(key, value).and_then(|()| self.db.flush().map(|_| ()).map_err(|e| e.to_string())) {
            tracing::error!(key, error = %e, "the simulator could not store a value durably");
        }
    }

    /// Removes `key` and makes that durable before returning.
    pub fn remove_durably(&self, key: &str) {
        let removed = self.tree.remove(key.as_bytes()).map_err(|e| e.to_string());
        if let Err(e) = removed.and_then(|_| self.db.flush().map(|_| ()).map_err(|e| e.to_string())) {
            tracing::error!(key, error = %e, "the simulator could not remove a value");
        }
    }

    fn write(&self, key: &str, value: &T) -> Result<(), String> {
        let bytes = postcard::to_stdvec(value).map_err(|e| e.to_string())?;
        self.tree.insert(key.as_bytes(), bytes).map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Book {
        trades: std::collections::HashMap<String, u32>,
    }

    #[test]
    fn a_book_and_a_table_come_back_after_the_store_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SimStore::open(dir.path()).unwrap();
            let book: Persisted<Book> = store.book("alipay").unwrap();
            book.lock().trades.insert("T1".into(), 7);
            let read_only = book.lock();
            assert_eq!(read_only.trades.len(), 1);
            drop(read_only);
            let table: Table<String> = store.table("sandbox").unwrap();
            table.put_durably("P1", &"paid".to_owned());
        }
        let store = SimStore::open(dir.path()).unwrap();
        let book: Persisted<Book> = store.book("alipay").unwrap();
        assert_eq!(book.lock().trades.get("T1"), Some(&7));
        let table: Table<String> = store.table("sandbox").unwrap();
        assert_eq!(table.all(), vec![("P1".to_owned(), "paid".to_owned())]);
    }
}
