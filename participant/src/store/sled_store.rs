//! [`SledStore`]: the participant's production store, sled 0.34 on disk.
//!
//! Each key is stored under itself in sled's default tree. Its value is encoded as the 8-byte
//! big-endian version (the LSN of the log record that committed it) followed by the value's
//! bytes, so an empty value (8 bytes stored) stays distinct from an absent key. A stored value
//! shorter than 8 bytes cannot have been written by this module and is reported as
//! [`StoreError::Corrupt`].
//!
//! [`Store::apply`] writes one `sled::Batch`, which sled applies atomically, also across a crash.
//!
//! Durability: sled 0.34's `flush()` never calls fsync (it uses `sync_file_range`, and only a
//! background thread syncs, every 500 ms; spacejam/sled#1452). [`Store::sync`] therefore flushes,
//! then fsyncs every file under the store's directory and the directories themselves. Between
//! syncs a crash may drop applies; recovery restores them from the write-ahead log.
//!
//! sled has open reports of databases that no longer open after a crash (spacejam/sled#1527,
//! #1533). [`SledStore::open`] fails closed: the error names the directory and the way back
//! (restore from a backup, or rebuild by replaying the write-ahead log); a store that did not
//! open cleanly is never served.

use std::fs::File;
use std::io::ErrorKind;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use concord_core::participant::Versioned;
use concord_core::record::Write;

use super::{Store, StoreError, show_key};

/// Bytes of the big-endian version in front of every stored value.
const VERSION_BYTES: usize = 8;

/// What an operator does when the store will not open, appended to the open error.
const WAY_BACK: &str = "the store will not be served. To recover, restore the store from a \
    backup, or move the directory aside, then restart: the participant rebuilds the store by \
    replaying its write-ahead log, if its write-ahead log still holds every record since the \
    store was created; otherwise restore from a backup";

/// A store on disk, in sled. See the module documentation.
#[derive(Debug)]
pub struct SledStore {
    /// The open database; its default tree holds the committed state.
    db: sled::Db,
    /// sled's directory: named in errors and walked by [`Store::sync`] to fsync its files.
    dir: PathBuf,
    /// Set by the first failed write or sync; the store then refuses all further work, because
    /// a retried fsync can report success after the kernel dropped the unsynced pages.
    failed: OnceLock<String>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Fails closed if sled cannot open it cleanly, with
    /// an error that names the directory and says how to recover.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let opened = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open();
        match opened {
            Ok(db) => {
                tracing::info!(dir = %dir.display(), recovered = db.was_recovered(), "store opened");
                Ok(SledStore { db, dir: dir.to_path_buf(), failed: OnceLock::new() })
            }
            Err(error) => {
                tracing::error!(dir = %dir.display(), %error, "store failed to open");
                Err(StoreError::Backend {
                    context: format!("opening the store in {}", dir.display()),
                    message: format!("{error}; {WAY_BACK}"),
                })
            }
        }
    }

    /// The directory the store lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn refuse_if_failed(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Records `error` as the store's failure (the first one wins) and returns it.
    fn fail(&self, error: StoreError) -> StoreError {
        tracing::error!(dir = %self.dir.display(), %error, "store failed");
        // Only the first failure is kept; a later one changes nothing.
        let _ = self.failed.set(error.to_string());
        error
    }

    /// Decodes a stored value: its 8-byte big-endian version, then the value.
    fn decode(&self, key: &[u8], stored: &[u8]) -> Result<Versioned, StoreError> {
        match stored.split_first_chunk::<VERSION_BYTES>() {
            Some((version, value)) => {
                Ok(Versioned { version: u64::from_be_bytes(*version), value: value.to_vec() })
            }
            None => Err(StoreError::Corrupt {
                detail: format!(
                    "the value of key {} in {} is {} bytes, shorter than its {VERSION_BYTES}-byte \
                     version",
                    show_key(key),
                    self.dir.display(),
                    stored.len()
                ),
            }),
        }
    }

    /// fsyncs every regular file under the store's directory, then every directory (children
    /// before their parents), then the directory that holds the store, so that a newly created
    /// store's own entry is durable too.
    fn sync_files(&self) -> Result<(), StoreError> {
        let mut directories = vec![self.dir.clone()];
        let mut index = 0;
        while let Some(directory) = directories.get(index).cloned() {
            index += 1;
            let entries = std::fs::read_dir(&directory)
                .map_err(|e| StoreError::backend(format!("listing {}", directory.display()), &e))?;
            for entry in entries {
                let entry = entry.map_err(|e| {
                    StoreError::backend(format!("listing {}", directory.display()), &e)
                })?;
                let path = entry.path();
                let file_type = entry.file_type().map_err(|e| {
                    StoreError::backend(format!("inspecting {}", path.display()), &e)
                })?;
                if file_type.is_dir() {
                    directories.push(path);
                } else if file_type.is_file() {
                    sync_path(&path)?;
                }
            }
        }
        // Breadth-first order lists parents before children: sync in reverse.
        for directory in directories.iter().rev() {
            sync_path(directory)?;
        }
        if let Some(parent) = self.dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            sync_path(parent)?;
        }
        Ok(())
    }
}

/// fsyncs one file or directory. A path that vanished since it was listed is skipped: sled
/// replaces and removes its snapshot files in the background, syncing each new snapshot itself
/// before renaming it into place, and the rename is made durable by the directory's sync.
fn sync_path(path: &Path) -> Result<(), StoreError> {
    // On Unix, fsync works on a descriptor opened read-only, for files and directories alike.
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::backend(format!("opening {} to sync", path.display()), &e));
        }
    };
    file.sync_all().map_err(|e| StoreError::backend(format!("syncing {}", path.display()), &e))
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        let stored = self.db.get(key).map_err(|e| {
            StoreError::backend(
                format!("reading key {} in {}", show_key(key), self.dir.display()),
                &e,
            )
        })?;
        stored.map(|stored| self.decode(key, &stored)).transpose()
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        // An inverted range holds nothing; do not hand it to sled.
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut entries = Vec::new();
        for item in self.db.range::<&[u8], _>((Bound::Included(start), upper)).take(limit) {
            let (key, stored) = item
                .map_err(|e| StoreError::backend(format!("scanning {}", self.dir.display()), &e))?;
            let versioned = self.decode(&key, &stored)?;
            entries.push((key.to_vec(), versioned));
        }
        Ok(entries)
    }

    fn apply(&self, writes: &[Write], version: u64) -> Result<(), StoreError> {
        self.apply_all(&[(writes, version)])
    }

    /// One write in all: a plain insert or remove (atomic by itself). More: one sled batch for
    /// every commit. sled rolls its log buffer twice for every batch (two writes and
    /// `sync_file_range`s of its own log; `PageCache::pin_log`), so a batch per commit cost a
    /// participant more CPU than the rest of the transaction; one per applier batch, or none
    /// for a single write, removes most of it.
    fn apply_all(&self, commits: &[(&[Write], u64)]) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        let stored = |version: u64, value: &[u8]| {
            let mut stored = Vec::with_capacity(VERSION_BYTES + value.len());
            stored.extend_from_slice(&version.to_be_bytes());
            stored.extend_from_slice(value);
            stored
        };
        let total: usize = commits.iter().map(|(writes, _)| writes.len()).sum();
        if total == 0 {
            return Ok(());
        }
        let applied = match commits {
            [(single, version)] if total == 1 => match &single[0].value {
                Some(value) => {
                    self.db.insert(single[0].key.as_slice(), stored(*version, value)).map(|_| ())
                }
                None => self.db.remove(single[0].key.as_slice()).map(|_| ()),
            },
            _ => {
                let mut batch = sled::Batch::default();
                for (writes, version) in commits {
                    for write in *writes {
                        match &write.value {
                            Some(value) => {
                                batch.insert(write.key.as_slice(), stored(*version, value));
                            }
                            None => batch.remove(write.key.as_slice()),
                        }
                    }
                }
                self.db.apply_batch(batch)
            }
        };
        applied.map_err(|e| {
            self.fail(StoreError::backend(
                format!(
                    "applying {total} writes of {} commits in {}",
                    commits.len(),
                    self.dir.display()
                ),
                &e,
            ))
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        self.db.flush().map_err(|e| {
            self.fail(StoreError::backend(format!("flushing {}", self.dir.display()), &e))
        })?;
        self.sync_files().map_err(|e| self.fail(e))?;
        tracing::debug!(dir = %self.dir.display(), "store synced");
        Ok(())
    }
}
