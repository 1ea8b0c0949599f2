//! The handles this server proxy has issued, in memory and in an append-only file.
//!
//! File format: the magic `GVFSHDL1`, then one record per handle: its length (1 byte,
//! 1..=64), its bytes, and a CRC-32 of length and bytes (4 bytes, big-endian). A record
//! is appended (one `write`) before the reply that issued the handle goes out, so a
//! killed proxy keeps every handle a client has seen (the page cache survives the
//! process; a power loss may lose the last few, whose clients then get STALE and look
//! the name up again). At open, a torn or damaged tail (a crash mid-append) is cut off
//! at the last whole record. The file is locked (`flock`) so two proxies cannot share it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use tracing::{info, warn};

use crate::nfs3::NFS3_FHSIZE;

const MAGIC: &[u8; 8] = b"GVFSHDL1";

pub struct HandleSet {
    set: RwLock<HashSet<Box<[u8]>>>,
    /// The file, and where its last whole record ends.
    file: Mutex<(File, u64)>,
    path: PathBuf,
}

impl HandleSet {
    /// Opens the set kept in `path` for these exports. Handles were issued for the
    /// exports in the file's header; if the configured list differs (an export removed),
    /// the old file is set aside (`.old`) and a new one started, so no handle of a
    /// removed export stays valid. Clients then look their paths up again.
    pub fn open_for(path: &Path, exports: &[Vec<u8>]) -> std::io::Result<HandleSet> {
        let mut want = Vec::new();
        for e in exports {
            want.extend_from_slice(e);
            want.push(0);
        }
        let header_path = path.with_extension("exports");
        match std::fs::read(&header_path) {
            Ok(found) if found == want => {}
            Ok(_) => {
                warn!(file = %path.display(), "server.exports changed: issued handles set aside, clients look their paths up again");
                let _ = std::fs::rename(path, path.with_extension("old"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if path.exists() {
                    let _ = std::fs::rename(path, path.with_extension("old"));
                }
            }
            Err(e) => return Err(e),
        }
        let set = HandleSet::open(path)?;
        let tmp = header_path.with_extension("tmp");
        std::fs::write(&tmp, &want)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &header_path))?;
        Ok(set)
    }

    pub fn open(path: &Path) -> std::io::Result<HandleSet> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::other(format!(
                "{} is in use by another gridvfs (server.state_dir must not be shared)",
                path.display()
            )));
        }
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let mut set = HashSet::new();
        let good_len = if buf.is_empty() {
            file.write_all(MAGIC)?;
            file.sync_all()?;
            MAGIC.len()
        } else {
            if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
                return Err(std::io::Error::other(format!(
                    "{} is not a gridvfs handle file (bad magic); move it away to start afresh",
                    path.display()
                )));
            }
            let mut at = MAGIC.len();
            while let Some((fh, next)) = record_at(&buf, at) {
                set.insert(Box::<[u8]>::from(fh));
                at = next;
            }
            if at != buf.len() {
                warn!(side = "internal", file = %path.display(), kept = set.len(),
                    cut_bytes = buf.len() - at, "damaged tail of the handle file cut off");
                file.set_len(at as u64)?;
                file.sync_all()?;
            }
            at
        };
        file.seek(SeekFrom::Start(good_len as u64))?;
        info!(file = %path.display(), handles = set.len(), "issued handles loaded");
        Ok(HandleSet {
            set: RwLock::new(set),
            file: Mutex::new((file, good_len as u64)),
            path: path.to_path_buf(),
        })
    }

    pub fn contains(&self, fh: &[u8]) -> bool {
        self.set.read().expect("handle set lock").contains(fh)
    }

    pub fn len(&self) -> usize {
        self.set.read().expect("handle set lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a handle (written to the file first if new). Returns whether it was new.
    pub fn insert(&self, fh: &[u8]) -> std::io::Result<bool> {
        if fh.is_empty() || fh.len() > NFS3_FHSIZE || self.contains(fh) {
            return Ok(false);
        }
        let mut guard = self.file.lock().expect("handle file lock");
        let (file, end) = &mut *guard;
        // Re-check under the file lock: two replies may issue the same handle at once.
        if self.contains(fh) {
            return Ok(false);
        }
        let mut rec = Vec::with_capacity(fh.len() + 5);
        rec.push(fh.len() as u8);
        rec.extend_from_slice(fh);
        let crc = crc32fast::hash(&rec);
        rec.extend_from_slice(&crc.to_be_bytes());
        // In memory first: the handle is valid for this run even if it cannot be saved.
        self.set
            .write()
            .expect("handle set lock")
            .insert(Box::<[u8]>::from(fh));
        if let Err(e) = file.write_all(&rec) {
            // A partial append would corrupt what follows: put the file back at the
            // last whole record.
            let _ = file
                .set_len(*end)
                .and_then(|_| file.seek(SeekFrom::Start(*end)));
            return Err(std::io::Error::new(
                e.kind(),
                format!("appending to {}: {e}", self.path.display()),
            ));
        }
        *end += rec.len() as u64;
        Ok(true)
    }
}

/// The handle in the record at `at`, and where the next record starts.
fn record_at(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = *buf.get(at)? as usize;
    if len == 0 || len > NFS3_FHSIZE {
        return None;
    }
    let end = at + 1 + len + 4;
    let rec = buf.get(at..end)?;
    let crc = u32::from_be_bytes(rec[1 + len..].try_into().ok()?);
    (crc32fast::hash(&rec[..1 + len]) == crc).then_some((&rec[1..1 + len], end))
}
