//! A redb database that one process holds open, or that several processes
//! share one transaction at a time: the store's metadata, and the home's
//! history index.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, WriteTransaction};

use super::StoreError;

/// A database, held open or opened for each transaction.
pub(crate) struct Db {
    handle: Handle,
    path: PathBuf,
}

/// How a [`Db`] reaches its database file.
enum Handle {
    /// This process alone uses it (a node, `gc`, or a database in memory):
    /// it stays open.
    Held(Database),
    /// Other commands may use it at once (`ls` during a push): each
    /// transaction opens the file and closes it after, so no one holds it
    /// for longer than a transaction. Writes fail when not `writable`.
    PerTransaction {
        /// Whether write transactions are allowed.
        writable: bool,
        /// How long to wait for another process's transaction to end.
        patience: Duration,
    },
}

/// A transaction, and the database it came from when it was opened for it
/// alone: the database closes after the transaction ends, never before.
pub(crate) struct Txn<T> {
    txn: T,
    _db: Option<Opened>,
}

/// A database opened for one transaction.
enum Opened {
    ReadOnly(ReadOnlyDatabase),
    Writable(Database),
}

impl<T> Deref for Txn<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.txn
    }
}

impl Txn<WriteTransaction> {
    /// Makes the transaction's changes durable.
    pub(crate) fn commit(self) -> Result<(), redb::CommitError> {
        self.txn.commit()
    }

    /// Drops the transaction's changes.
    pub(crate) fn abort(self) -> Result<(), redb::StorageError> {
        self.txn.abort()
    }
}

impl Db {
    /// `db`, which this process holds open, found at `path`.
    pub(crate) fn held(db: Database, path: &Path) -> Self {
        Self { handle: Handle::Held(db), path: path.to_owned() }
    }

    /// The database at `path`, opened for each transaction (waiting up to
    /// `patience` for another process's transaction to end); a read-only
    /// one never writes, so it works on a read-only disk.
    pub(crate) fn per_transaction(path: &Path, writable: bool, patience: Duration) -> Self {
        Self { handle: Handle::PerTransaction { writable, patience }, path: path.to_owned() }
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A read transaction.
    pub(crate) fn read(&self) -> Result<Txn<ReadTransaction>, StoreError> {
        match &self.handle {
            Handle::Held(db) => Ok(Txn { txn: db.begin_read().map_err(self.err())?, _db: None }),
            Handle::PerTransaction { patience, .. } => {
                let db = self.retry_while_busy(*patience, || match ReadOnlyDatabase::open(&self.path) {
                    // A database not closed cleanly must be repaired first,
                    // which takes a writable open.
                    Err(DatabaseError::RepairAborted) => Database::create(&self.path).map(Opened::Writable),
                    other => other.map(Opened::ReadOnly),
                })?;
                let txn = match &db {
                    Opened::ReadOnly(db) => db.begin_read(),
                    Opened::Writable(db) => db.begin_read(),
                }
                .map_err(self.err())?;
                Ok(Txn { txn, _db: Some(db) })
            }
        }
    }

    /// A write transaction.
    pub(crate) fn write(&self) -> Result<Txn<WriteTransaction>, StoreError> {
        match &self.handle {
            Handle::Held(db) => Ok(Txn { txn: db.begin_write().map_err(self.err())?, _db: None }),
            Handle::PerTransaction { writable: false, .. } => Err(StoreError::ReadOnly(self.path.clone())),
            Handle::PerTransaction { writable: true, patience } => {
                let db = self.retry_while_busy(*patience, || Database::create(&self.path))?;
                let txn = db.begin_write().map_err(self.err())?;
                Ok(Txn { txn, _db: Some(Opened::Writable(db)) })
            }
        }
    }

    /// Runs `open` until the database is not open in another process, or
    /// `patience` runs out. Transactions are short, so the wait is too.
    fn retry_while_busy<D>(
        &self,
        patience: Duration,
        mut open: impl FnMut() -> Result<D, DatabaseError>,
    ) -> Result<D, StoreError> {
        // `None`: wait as long as it takes.
        let deadline = Instant::now().checked_add(patience);
        let mut pause = Duration::from_millis(1);
        loop {
            match open() {
                Err(DatabaseError::DatabaseAlreadyOpen) if deadline.is_none_or(|d| Instant::now() < d) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Busy(self.path.clone())),
                other => return other.map_err(self.err()),
            }
        }
    }

    /// Maps a redb error to a [`StoreError`] naming this database.
    pub(crate) fn err<E: Into<redb::Error>>(&self) -> impl FnOnce(E) -> StoreError + use<E> {
        db_err(&self.path)
    }
}

/// Maps a redb error to a [`StoreError`] naming the database at `path`.
pub(crate) fn db_err<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> StoreError + use<E> {
    let path = path.to_owned();
    move |e| StoreError::Db { path, source: Box::new(e.into()) }
}
