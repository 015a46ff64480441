//! [`FileWal`]: the write-ahead log on disk, in segment files (format in [`crate::format`]).
//!
//! Appenders never touch the file. [`Wal::append`] encodes the record into a shared buffer under
//! a mutex and returns its LSN; one writer thread takes the whole buffer, writes it with one
//! `write`, syncs it with one `fdatasync`, and publishes the new durable LSN on a watch channel
//! that [`Wal::wait_durable`] waits on. Whatever arrives while a sync runs goes into the next
//! batch: that is group commit, with no timer and no extra latency for a lone appender.
//!
//! The writer syncs when someone waits: [`Wal::wait_durable`] asks for a sync, a plain append
//! does not. Records nobody waits for (presumed-abort records, bookkeeping) ride along with the
//! next requested sync, or are written at most [`LAZY_FLUSH_INTERVAL`] later, so they never cost
//! a sync of their own or delay one that someone is waiting for.
//!
//! The writer rolls to a new segment between batches once the current one reaches
//! [`FileWalOptions::segment_bytes`]. [`Wal::truncate_before`] deletes whole segments below a
//! checkpoint; the segment being written is never deleted.
//!
//! Segments are preallocated ([`FileWalOptions::preallocate`]): zero-filled to their full size
//! and synced when created, and written in place. An `fdatasync` of a file that grew must also
//! commit the new size through the file system's journal; one of bytes written over allocated
//! blocks writes only the data (on this project's ext4 machines, ~160 µs instead of ~300 µs per
//! sync). A helper thread zero-fills the next segment as a spare file while the current one
//! fills, so rolling costs a rename, not a 16 MiB write. Zero bytes after a segment's last record
//! end the segment (see [`crate::format`]).
//!
//! Memory: the append buffer holds at most what callers appended during one sync; callers bound
//! it by bounding their in-flight work (in-flight transactions × the record-size limit).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::format::{self, Decoded};
use crate::{Lsn, Record, RecordIter, Wal, WalError};

/// Records nobody waits for are written and synced at most this long after their append.
pub const LAZY_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Buffers larger than this are released after their batch is written, so one burst does not
/// pin its memory forever.
const RETAINED_BUFFER_BYTES: usize = 1024 * 1024;

/// The zero-filled file that becomes the next segment. Never read: a crash leaves it behind, and
/// the next open deletes it.
const SPARE_FILE_NAME: &str = "next-segment.spare";

/// How a [`FileWal`] is laid out and limited.
#[derive(Clone, Debug)]
pub struct FileWalOptions {
    /// A segment is closed, and a new one started, once it holds at least this many bytes.
    pub segment_bytes: u64,
    /// The largest payload [`Wal::append`] accepts (at most [`format::MAX_PAYLOAD_LEN`]).
    pub max_record_bytes: usize,
    /// Zero-fill every new segment to `segment_bytes` and write it in place (see the module
    /// documentation). Off, segments grow by appends, and a torn tail is cut off by truncation.
    pub preallocate: bool,
}

impl Default for FileWalOptions {
    fn default() -> Self {
        FileWalOptions {
            segment_bytes: 16 * 1024 * 1024,
            max_record_bytes: 4 * 1024 * 1024,
            preallocate: true,
        }
    }
}

/// A write-ahead log in a directory of segment files. See the crate documentation.
pub struct FileWal {
    /// State shared with the writer thread.
    shared: Arc<Shared>,
    /// The writer thread; `None` once it has been stopped.
    writer: Option<JoinHandle<()>>,
    /// Held for the log's lifetime: an exclusive lock on `dir/LOCK`, so two processes never
    /// write one log.
    _lock: File,
}

/// What appenders, readers and the writer thread share.
struct Shared {
    /// The log's directory.
    dir: PathBuf,
    options: FileWalOptions,
    /// The append buffer and its bookkeeping.
    state: Mutex<AppendState>,
    /// Wakes the writer thread when the buffer gains records or the log closes.
    wake: Condvar,
    /// The durable LSN and terminal conditions, published by the writer after each sync.
    durable: watch::Sender<Durability>,
    /// Segments on disk, oldest first. The last one is being written.
    segments: Mutex<Vec<Segment>>,
    /// Test-only: the next sync fails as if the disk had.
    #[cfg(test)]
    inject_sync_failure: std::sync::atomic::AtomicBool,
}

/// The appenders' side of the log.
struct AppendState {
    /// Encoded records not yet taken by the writer.
    buffer: Vec<u8>,
    /// The LSN the next append receives.
    next_lsn: Lsn,
    /// Set once a write or sync failed: every later append fails with it.
    failed: Option<String>,
    /// Someone waits for a record in `buffer` to become durable: sync without delay.
    sync_requested: bool,
    /// Whether, and how, the writer should stop.
    stop: Stop,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Keep running.
    No,
    /// Write and sync everything buffered, then stop.
    Drain,
    /// Stop at once, dropping what is buffered (a simulated kill -9).
    Crash,
}

/// What waiters watch.
#[derive(Clone, Debug, Default)]
struct Durability {
    /// Every record up to here is durable.
    lsn: Lsn,
    /// Why the log failed, if it did.
    failed: Option<Arc<str>>,
    /// The writer has stopped: nothing more will become durable.
    stopped: bool,
}

/// One segment file.
#[derive(Clone, Debug)]
struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
}

impl FileWal {
    /// Opens (or creates) the log in `dir`: validates every segment, truncates a torn tail,
    /// refuses a corrupt log with [`WalError::Corrupt`], syncs what it found so that everything
    /// readable is durable, and starts the writer thread.
    pub fn open(dir: &Path, options: FileWalOptions) -> Result<FileWal, WalError> {
        if options.max_record_bytes > format::MAX_PAYLOAD_LEN {
            return Err(WalError::RecordTooLarge {
                len: options.max_record_bytes,
                max: format::MAX_PAYLOAD_LEN,
            });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| WalError::io(format!("creating {}", dir.display()), &e))?;
        let lock = lock_dir(dir)?;
        remove_spare(dir)?;
        let fill = if options.preallocate { options.segment_bytes } else { 0 };

        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            segments.push(create_segment(dir, Lsn(1), fill)?);
        }
        let (last_lsn, active_len) = recover_segments(&segments, options.preallocate)?;
        let active =
            segments.last().cloned().ok_or_else(|| WalError::Failed("no segment".into()))?;
        let file = OpenOptions::new()
            .write(true)
            .open(&active.path)
            .map_err(|e| WalError::io(format!("opening {}", active.path.display()), &e))?;
        file.sync_data()
            .map_err(|e| WalError::io(format!("syncing {}", active.path.display()), &e))?;
        tracing::info!(dir = %dir.display(), segments = segments.len(), %last_lsn, "opened write-ahead log");

        let (durable, _) = watch::channel(Durability { lsn: last_lsn, ..Durability::default() });
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(AppendState {
                buffer: Vec::new(),
                next_lsn: last_lsn.next(),
                failed: None,
                sync_requested: false,
                stop: Stop::No,
            }),
            wake: Condvar::new(),
            durable,
            segments: Mutex::new(segments),
            #[cfg(test)]
            inject_sync_failure: std::sync::atomic::AtomicBool::new(false),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("concord-wal-writer".into())
            .spawn(move || run_writer(&writer_shared, file, active_len))
            .map_err(|e| WalError::io("starting the writer thread", &e))?;
        Ok(FileWal { shared, writer: Some(writer), _lock: lock })
    }

    /// Writes and syncs everything appended so far, then stops the writer. Returns the failure
    /// if the log had failed.
    pub fn close(mut self) -> Result<(), WalError> {
        self.stop(Stop::Drain);
        match lock(&self.shared.state).failed.clone() {
            Some(reason) => Err(WalError::Failed(reason)),
            None => Ok(()),
        }
    }

    /// Stops the writer at once without writing what is still buffered, as a kill -9 would.
    /// Records already written stay in the files (the page cache keeps them); this is for tests
    /// of crash recovery.
    pub fn crash(mut self) {
        self.stop(Stop::Crash);
    }

    /// The directory the log lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn stop(&mut self, how: Stop) {
        if let Some(writer) = self.writer.take() {
            lock(&self.shared.state).stop = how;
            self.shared.wake.notify_one();
            if writer.join().is_err() {
                tracing::error!("write-ahead log writer thread panicked");
            }
        }
    }
}

impl Drop for FileWal {
    fn drop(&mut self) {
        self.stop(Stop::Drain);
    }
}

impl Wal for FileWal {
    fn append(&self, payload: &[u8]) -> Result<Lsn, WalError> {
        let max = self.shared.options.max_record_bytes;
        if payload.len() > max {
            return Err(WalError::RecordTooLarge { len: payload.len(), max });
        }
        let mut state = lock(&self.shared.state);
        if let Some(reason) = &state.failed {
            return Err(WalError::Failed(reason.clone()));
        }
        if state.stop != Stop::No {
            return Err(WalError::Closed);
        }
        let lsn = state.next_lsn;
        format::encode_record(&mut state.buffer, lsn, payload);
        state.next_lsn = lsn.next();
        Ok(lsn)
    }

    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), WalError>> + Send {
        assert!(lsn <= self.last_lsn(), "waiting for LSN {lsn}, which was never appended");
        let mut receiver = self.shared.durable.subscribe();
        if self.durable_lsn() < lsn {
            lock(&self.shared.state).sync_requested = true;
            self.shared.wake.notify_one();
        }
        async move {
            let seen = receiver
                .wait_for(|d| d.lsn >= lsn || d.failed.is_some() || d.stopped)
                .await
                .map_err(|_| WalError::Closed)?
                .clone();
            if seen.lsn >= lsn {
                Ok(())
            } else if let Some(reason) = seen.failed {
                Err(WalError::Failed(reason.to_string()))
            } else {
                Err(WalError::Closed)
            }
        }
    }

    fn durable_lsn(&self) -> Lsn {
        self.shared.durable.borrow().lsn
    }

    fn last_lsn(&self) -> Lsn {
        Lsn(lock(&self.shared.state).next_lsn.0 - 1)
    }

    fn first_lsn(&self) -> Lsn {
        let segments = lock(&self.shared.segments);
        segments.first().map_or_else(|| self.last_lsn().next(), |s| s.first_lsn)
    }

    fn read_from(&self, from: Lsn) -> Result<RecordIter<'_>, WalError> {
        let until = self.durable_lsn();
        let segments = lock(&self.shared.segments).clone();
        // Start at the last segment whose first LSN is at or below `from`.
        let start = segments.iter().rposition(|s| s.first_lsn <= from).unwrap_or(0);
        Ok(Box::new(SegmentReader {
            segments: segments.into_iter().skip(start).collect::<Vec<_>>().into_iter(),
            current: None,
            from,
            until,
            done: from > until,
        }))
    }

    fn truncate_before(&self, lsn: Lsn) -> Result<(), WalError> {
        let mut segments = lock(&self.shared.segments);
        // Segment i holds LSNs below segment i+1's first LSN; it can go once that is <= lsn.
        let removable = segments.windows(2).take_while(|pair| pair[1].first_lsn <= lsn).count();
        if removable == 0 {
            return Ok(());
        }
        failpoint("wal.before_truncate").map_err(|e| WalError::io("removing old segments", &e))?;
        for segment in segments.drain(..removable) {
            std::fs::remove_file(&segment.path)
                .map_err(|e| WalError::io(format!("removing {}", segment.path.display()), &e))?;
        }
        drop(segments);
        sync_dir(&self.shared.dir)?;
        failpoint("wal.after_truncate").map_err(|e| WalError::io("removing old segments", &e))?;
        tracing::debug!(before = %lsn, removed = removable, "truncated write-ahead log");
        Ok(())
    }
}

/// The writer thread: take the buffer, write it at `end` (where the active segment's records
/// end), sync it, publish, roll segments; until stopped.
fn run_writer(shared: &Shared, mut file: File, mut end: u64) {
    let mut batch = Vec::new();
    let mut spare = Spare::start(shared);
    loop {
        let batch_last = {
            let mut state = lock(&shared.state);
            // Wait until a sync is asked for, lazy records are due, or the log stops.
            let mut lazy_due = false;
            while !(state.sync_requested || state.stop != Stop::No || lazy_due) {
                let (next, timeout) = shared
                    .wake
                    .wait_timeout(state, LAZY_FLUSH_INTERVAL)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state = next;
                lazy_due = timeout.timed_out() && !state.buffer.is_empty();
            }
            state.sync_requested = false;
            if state.stop == Stop::Crash || (state.buffer.is_empty() && state.stop == Stop::Drain) {
                break;
            }
            if state.buffer.is_empty() {
                continue; // the waiter's records were in the batch just synced
            }
            std::mem::swap(&mut state.buffer, &mut batch);
            Lsn(state.next_lsn.0 - 1)
        };

        let written = file
            .write_all_at(&batch, end)
            .and_then(|()| failpoint("wal.before_sync"))
            .and_then(|()| sync_data(shared, &file))
            .and_then(|()| failpoint("wal.after_sync"));
        if let Err(error) = written {
            fail(shared, format!("writing and syncing the active segment: {error}"));
            break;
        }
        end += batch.len() as u64;
        batch.clear();
        if batch.capacity() > RETAINED_BUFFER_BYTES {
            batch = Vec::new();
        }
        shared.durable.send_modify(|d| d.lsn = batch_last);

        if end >= shared.options.segment_bytes {
            match spare.take_as_segment(shared, batch_last.next()) {
                Ok(segment) => {
                    match OpenOptions::new().write(true).open(&segment.path) {
                        Ok(next) => file = next,
                        Err(error) => {
                            fail(shared, format!("opening {}: {error}", segment.path.display()));
                            break;
                        }
                    }
                    end = format::SEGMENT_HEADER_LEN as u64;
                    lock(&shared.segments).push(segment);
                    spare = Spare::start(shared);
                }
                Err(error) => {
                    fail(shared, error.to_string());
                    break;
                }
            }
        }
    }
    spare.finish();
    shared.durable.send_modify(|d| d.stopped = true);
}

/// The next segment, zero-filled ahead of time by a helper thread (when preallocating).
struct Spare(Option<JoinHandle<Result<(), WalError>>>);

impl Spare {
    /// Starts zero-filling the spare file, if segments are preallocated.
    fn start(shared: &Shared) -> Spare {
        if !shared.options.preallocate {
            return Spare(None);
        }
        let dir = shared.dir.clone();
        let len = shared.options.segment_bytes;
        let started = std::thread::Builder::new()
            .name("concord-wal-spare".into())
            .spawn(move || create_spare(&dir, len));
        match started {
            Ok(handle) => Spare(Some(handle)),
            // Without the helper, the roll creates the segment itself.
            Err(error) => {
                tracing::warn!(%error, "could not start the spare-segment thread");
                Spare(None)
            }
        }
    }

    /// Turns the spare into the segment starting at `first_lsn`: header written and synced,
    /// renamed into place, directory synced. Without a spare, creates the segment directly.
    fn take_as_segment(&mut self, shared: &Shared, first_lsn: Lsn) -> Result<Segment, WalError> {
        let fill = if shared.options.preallocate { shared.options.segment_bytes } else { 0 };
        let ready = match self.0.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) => true,
            Some(Ok(Err(error))) => {
                tracing::warn!(%error, "the spare segment failed; creating the segment directly");
                false
            }
            Some(Err(_)) => {
                tracing::error!("the spare-segment thread panicked");
                false
            }
            None => false,
        };
        if !ready {
            return create_segment(&shared.dir, first_lsn, fill);
        }
        let spare = shared.dir.join(SPARE_FILE_NAME);
        let path = shared.dir.join(format::segment_file_name(first_lsn));
        OpenOptions::new()
            .write(true)
            .open(&spare)
            .and_then(|file| {
                file.write_all_at(&format::encode_segment_header(first_lsn), 0)?;
                file.sync_data()
            })
            .and_then(|()| std::fs::rename(&spare, &path))
            .map_err(|e| WalError::io(format!("turning {} into a segment", spare.display()), &e))?;
        sync_dir(&shared.dir)?;
        Ok(Segment { first_lsn, path })
    }

    /// Waits for the helper thread, so the log leaves no thread behind when it stops.
    fn finish(self) {
        if let Some(handle) = self.0
            && handle.join().is_err()
        {
            tracing::error!("the spare-segment thread panicked");
        }
    }
}

/// Writes the spare file: `len` zero bytes, synced with its size.
fn create_spare(dir: &Path, len: u64) -> Result<(), WalError> {
    let path = dir.join(SPARE_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(format!("creating {}", path.display()), &e))?;
    zero_fill(&file, 0, len)
        .and_then(|()| file.sync_all())
        .map_err(|e| WalError::io(format!("zero-filling {}", path.display()), &e))
}

/// Deletes a spare file an earlier run left behind.
fn remove_spare(dir: &Path) -> Result<(), WalError> {
    let path = dir.join(SPARE_FILE_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::io(format!("removing {}", path.display()), &e)),
    }
}

/// Writes zeros over `[from, to)` of `file`.
fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(usize::try_from(to.saturating_sub(from)).unwrap_or(CHUNK))];
    let mut at = from;
    while at < to {
        let n = zeros.len().min(usize::try_from(to - at).unwrap_or(zeros.len()));
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Syncs the active segment's data (and, in tests, fails on request).
fn sync_data(shared: &Shared, file: &File) -> std::io::Result<()> {
    #[cfg(test)]
    if shared.inject_sync_failure.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return Err(std::io::Error::other("injected sync failure"));
    }
    #[cfg(not(test))]
    let _ = shared;
    file.sync_data()
}

/// A failpoint (test builds only) as an I/O result: `error` fails like a disk would.
fn failpoint(point: &'static str) -> std::io::Result<()> {
    concord_failpoints::hit(point).map_err(std::io::Error::other)
}

/// Marks the log failed: appends and waits fail from now on. Never retried (see crate docs).
fn fail(shared: &Shared, reason: String) {
    tracing::error!(dir = %shared.dir.display(), %reason, "write-ahead log failed");
    lock(&shared.state).failed = Some(reason.clone());
    shared.durable.send_modify(|d| d.failed = Some(reason.into()));
}

/// Reads records from a list of segments, from `from` up to `until` inclusive.
struct SegmentReader {
    segments: std::vec::IntoIter<Segment>,
    /// The open segment: its path, a reader positioned at the next frame, and the byte offset.
    current: Option<(PathBuf, std::io::BufReader<File>, u64)>,
    from: Lsn,
    until: Lsn,
    done: bool,
}

impl SegmentReader {
    fn next_record(&mut self) -> Result<Option<Record>, WalError> {
        loop {
            if self.current.is_none() {
                let Some(segment) = self.segments.next() else {
                    return Ok(None);
                };
                let mut reader =
                    std::io::BufReader::new(File::open(&segment.path).map_err(|e| {
                        WalError::io(format!("opening {}", segment.path.display()), &e)
                    })?);
                let mut header = [0u8; format::SEGMENT_HEADER_LEN];
                reader
                    .read_exact(&mut header)
                    .map_err(|e| WalError::io(format!("reading {}", segment.path.display()), &e))?;
                self.current = Some((segment.path, reader, format::SEGMENT_HEADER_LEN as u64));
            }
            let Some((path, reader, offset)) = self.current.as_mut() else {
                continue;
            };
            let mut frame = vec![0u8; format::FRAME_HEADER_LEN];
            match reader.read_exact(&mut frame) {
                // Zeros past the records of a preallocated segment.
                Ok(()) if frame.iter().all(|&byte| byte == 0) => {
                    self.current = None;
                    continue;
                }
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.current = None;
                    continue;
                }
                Err(e) => return Err(WalError::io(format!("reading {}", path.display()), &e)),
            }
            let mut len_bytes = [0u8; 4];
            len_bytes.copy_from_slice(&frame[0..4]);
            let payload_len = u32::from_le_bytes(len_bytes) as usize;
            let corrupt =
                |detail: String| WalError::Corrupt { path: path.clone(), offset: *offset, detail };
            if payload_len > format::MAX_PAYLOAD_LEN {
                return Err(corrupt(format!("length {payload_len} exceeds the format maximum")));
            }
            frame.resize(format::FRAME_HEADER_LEN + payload_len, 0);
            reader
                .read_exact(&mut frame[format::FRAME_HEADER_LEN..])
                .map_err(|e| corrupt(format!("record ends early: {e}")))?;
            let lsn = match format::decode_record(&frame) {
                Decoded::Record { lsn, .. } => lsn,
                Decoded::Incomplete => return Err(corrupt("record ends early".into())),
                Decoded::Invalid(detail) => return Err(corrupt(detail)),
            };
            *offset += frame.len() as u64;
            if lsn > self.until {
                return Ok(None);
            }
            if lsn < self.from {
                continue;
            }
            frame.drain(..format::FRAME_HEADER_LEN);
            return Ok(Some(Record { lsn, payload: frame }));
        }
    }
}

impl Iterator for SegmentReader {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_record().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.done = true;
        }
        next
    }
}

/// Takes the directory's lock file, or fails if another process holds it.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(format!("opening {}", path.display()), &e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Io {
            context: format!("locking {}", path.display()),
            message: "the log is in use by another process".into(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(WalError::io(format!("locking {}", path.display()), &e))
        }
    }
}

/// The segment files in `dir`, ordered by first LSN.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| WalError::io(format!("listing {}", dir.display()), &e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(format!("listing {}", dir.display()), &e))?;
        let name = entry.file_name();
        if let Some(first_lsn) = name.to_str().and_then(format::parse_segment_file_name) {
            segments.push(Segment { first_lsn, path: entry.path() });
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Creates a segment file holding its header, zero-filled to `fill` bytes if that is longer,
/// durably (file and directory synced).
fn create_segment(dir: &Path, first_lsn: Lsn, fill: u64) -> Result<Segment, WalError> {
    let path = dir.join(format::segment_file_name(first_lsn));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(format!("creating {}", path.display()), &e))?;
    file.write_all(&format::encode_segment_header(first_lsn))
        .and_then(|()| zero_fill(&file, format::SEGMENT_HEADER_LEN as u64, fill))
        .and_then(|()| file.sync_all())
        .map_err(|e| WalError::io(format!("writing the header of {}", path.display()), &e))?;
    sync_dir(dir)?;
    Ok(Segment { first_lsn, path })
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(format!("syncing directory {}", dir.display()), &e))
}

/// Validates every segment in order and repairs a torn tail in the last one: cut off, or, in a
/// preallocated log, zeroed. Returns the LSN of the last valid record (`first_lsn - 1` of the
/// first segment if there is none) and the byte offset where the last segment's records end.
fn recover_segments(segments: &[Segment], preallocate: bool) -> Result<(Lsn, u64), WalError> {
    let mut expected = segments.first().map_or(Lsn(1), |s| s.first_lsn);
    let mut end = format::SEGMENT_HEADER_LEN;
    for (index, segment) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let corrupt = |offset: u64, detail: String| WalError::Corrupt {
            path: segment.path.clone(),
            offset,
            detail,
        };
        if segment.first_lsn != expected {
            return Err(corrupt(
                0,
                format!(
                    "segment starts at LSN {} but LSN {expected} was expected",
                    segment.first_lsn
                ),
            ));
        }
        let bytes = std::fs::read(&segment.path)
            .map_err(|e| WalError::io(format!("reading {}", segment.path.display()), &e))?;
        match format::decode_segment_header(&bytes) {
            Ok(first) if first == segment.first_lsn => {}
            Ok(first) => {
                return Err(corrupt(
                    0,
                    format!("header says first LSN {first}, the name says {}", segment.first_lsn),
                ));
            }
            // A crash while creating the last segment leaves it short or with a torn header and
            // nothing after it: write the header again.
            Err(format::HeaderError::Short | format::HeaderError::Invalid(_))
                if is_last
                    && bytes
                        .get(format::SEGMENT_HEADER_LEN..)
                        .is_none_or(|rest| rest.iter().all(|&byte| byte == 0)) =>
            {
                tracing::warn!(path = %segment.path.display(), "rewriting the torn header of the last segment");
                rewrite_header(segment)?;
                end = format::SEGMENT_HEADER_LEN;
                continue;
            }
            Err(format::HeaderError::UnsupportedVersion(version)) => {
                return Err(corrupt(0, format!("unsupported format version {version}")));
            }
            Err(format::HeaderError::Short) => {
                return Err(corrupt(0, "segment header is incomplete".into()));
            }
            Err(format::HeaderError::Invalid(detail)) => return Err(corrupt(0, detail)),
        }

        let mut offset = format::SEGMENT_HEADER_LEN;
        loop {
            if offset == bytes.len() {
                break;
            }
            let problem = match format::decode_record(&bytes[offset..]) {
                Decoded::Record { lsn, len, .. } if lsn == expected => {
                    offset += len;
                    expected = expected.next();
                    continue;
                }
                Decoded::Record { lsn, .. } => {
                    format!("LSN {lsn} where LSN {expected} was expected")
                }
                Decoded::Incomplete => "record ends early".to_string(),
                Decoded::Invalid(detail) => detail,
            };
            // The zeros of a preallocated segment past its records (no frame header is all
            // zeros: LSNs start at 1).
            if bytes[offset..].iter().all(|&byte| byte == 0) {
                // A log that grows by appends keeps its files exactly its records.
                if is_last && !preallocate {
                    truncate_file(&segment.path, offset as u64)?;
                }
                break;
            }
            if !is_last {
                return Err(corrupt(offset as u64, problem));
            }
            if let Some(good) = valid_record_after(&bytes, offset, expected) {
                return Err(corrupt(
                    offset as u64,
                    format!("{problem}, yet a valid record follows at offset {good}"),
                ));
            }
            // Everything after `offset` up to the last non-zero byte is the torn write.
            let torn_end = bytes.iter().rposition(|&byte| byte != 0).map_or(offset, |at| at + 1);
            tracing::warn!(
                path = %segment.path.display(),
                offset,
                dropped_bytes = torn_end - offset,
                "cutting off a torn tail"
            );
            if preallocate {
                zero_file_range(&segment.path, offset as u64, torn_end as u64)?;
            } else {
                truncate_file(&segment.path, offset as u64)?;
            }
            break;
        }
        end = offset;
    }
    Ok((Lsn(expected.0 - 1), end as u64))
}

/// Looks for a valid record starting anywhere after `bad` whose LSN could belong to this log
/// (at or after `expected`, and no further than the bytes left could hold). An append-only log
/// can only have written records at or after `expected` past the torn point, so a valid frame
/// with an older LSN there cannot be a surviving write, and is not counted.
fn valid_record_after(bytes: &[u8], bad: usize, expected: Lsn) -> Option<usize> {
    ((bad + 1)..bytes.len()).find(|&start| {
        let rest = &bytes[start..];
        if rest.len() < format::FRAME_HEADER_LEN {
            return false;
        }
        let mut lsn_bytes = [0u8; 8];
        lsn_bytes.copy_from_slice(&rest[8..16]);
        let lsn = u64::from_le_bytes(lsn_bytes);
        let plausible = lsn >= expected.0
            && lsn - expected.0 <= (bytes.len() / format::FRAME_HEADER_LEN) as u64;
        plausible && matches!(format::decode_record(rest), Decoded::Record { .. })
    })
}

fn rewrite_header(segment: &Segment) -> Result<(), WalError> {
    // Written in place: a preallocated segment keeps its zero-filled length.
    let file = OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .map_err(|e| WalError::io(format!("opening {}", segment.path.display()), &e))?;
    file.write_all_at(&format::encode_segment_header(segment.first_lsn), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| {
            WalError::io(format!("rewriting the header of {}", segment.path.display()), &e)
        })
}

fn zero_file_range(path: &Path, from: u64, to: u64) -> Result<(), WalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| zero_fill(&file, from, to).and_then(|()| file.sync_data()))
        .map_err(|e| WalError::io(format!("zeroing {} from byte {from}", path.display()), &e))
}

fn truncate_file(path: &Path, len: u64) -> Result<(), WalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.set_len(len).and_then(|()| file.sync_data()))
        .map_err(|e| WalError::io(format!("truncating {} to {len} bytes", path.display()), &e))
}

/// Locks a mutex, carrying on if a panicking thread poisoned it: every critical section here
/// leaves the state consistent before anything that can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A failed sync is fatal: pending waiters and every later append get `Failed`.
    #[tokio::test]
    async fn failed_sync_fails_the_log_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let wal = FileWal::open(dir.path(), FileWalOptions::default()).unwrap();
        wal.append_durable(b"before").await.unwrap();
        wal.shared.inject_sync_failure.store(true, std::sync::atomic::Ordering::SeqCst);
        let waited = wal.append_durable(b"lost").await;
        assert!(matches!(waited, Err(WalError::Failed(_))), "{waited:?}");
        assert!(matches!(wal.append(b"after"), Err(WalError::Failed(_))));
        assert_eq!(wal.durable_lsn(), Lsn(1));
        assert!(matches!(wal.close(), Err(WalError::Failed(_))));
    }

    /// A record nobody waits for still becomes durable on its own, soon after its append.
    #[tokio::test]
    async fn lazy_records_become_durable_without_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let wal = FileWal::open(dir.path(), FileWalOptions::default()).unwrap();
        let lsn = wal.append(b"lazy").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while wal.durable_lsn() < lsn {
            assert!(std::time::Instant::now() < deadline, "never synced");
            tokio::time::sleep(LAZY_FLUSH_INTERVAL).await;
        }
        wal.crash();
        let reopened = FileWal::open(dir.path(), FileWalOptions::default()).unwrap();
        assert_eq!(reopened.last_lsn(), lsn);
    }

    /// A second open of the same directory is refused while the first holds it.
    #[tokio::test]
    async fn second_open_of_one_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FileWal::open(dir.path(), FileWalOptions::default()).unwrap();
        let second = FileWal::open(dir.path(), FileWalOptions::default());
        assert!(matches!(second, Err(WalError::Io { .. })));
    }
}
