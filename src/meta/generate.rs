//! Making and checking sidecars: the library half of `gridvfs meta generate|show|verify`.
//!
//! Data enters as a path to a regular file. [`scan`] reads it once, front to back, in
//! 4 MiB reads, and returns a [`Sidecar`]: size and mtime (stat before and after, so a
//! file that changes under the scan is refused), the zero blocks, the BLAKE3 digest.
//! [`write_sidecar`] puts it beside the data file atomically (temp file, fsync, rename,
//! fsync of the directory); [`read_sidecar`] and [`verify`] read it back and say whether
//! it still describes the file. Everything here returns [`MetaError`], which names the
//! path; the binary alone turns it into a message and an exit code.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::format::{
    Actions, FileTime, MAX_BLOCK, MAX_SIDECAR, MIN_BLOCK, SUFFIX, Sidecar, SidecarError, Stale,
    ZeroMap, is_sidecar_name, sidecar_name,
};

/// Bytes per read: large enough that syscalls cost nothing next to hashing, a multiple
/// of every allowed block size so blocks never straddle two reads.
const READ_BUF: usize = 4 << 20;
const _: () = assert!(READ_BUF.is_multiple_of(MAX_BLOCK as usize));

/// Zero runs kept while scanning at most (16 bytes each, so 64 MiB). Past this the file
/// is too fragmented for the sidecar to be worth having at this block size.
pub const MAX_SCAN_RUNS: usize = super::format::MAX_RUNS;

/// Where a temporary sidecar is written before the rename (names containing this are
/// skipped by directory walks).
pub const TEMP_MARK: &str = ".gvfsmeta.tmp.";

/// What a scan computes besides the zero map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Zero-map granularity: a power of two in 512..=1 MiB (4096 by default, the page
    /// size and the usual guest file-system block).
    pub block_size: u32,
    /// Stored in the sidecar as is.
    pub actions: Actions,
    /// Whether to compute the BLAKE3 digest (what `meta verify` checks content against).
    pub digest: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            block_size: 4096,
            actions: Actions::default(),
            digest: true,
        }
    }
}

/// Why making, reading or checking a sidecar failed. Every message names the path.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{}: no such {what}", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{}: cannot read the sidecar: {source}", path.display())]
    ReadSidecar { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Malformed { path: PathBuf, source: SidecarError },
    #[error("{}: not a regular file ({kind})", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{}: no sidecar possible (`.NAME{SUFFIX}` would pass 255 bytes, or the file is a sidecar)",
        path.display()
    )]
    NoSidecarName { path: PathBuf },
    #[error("{}: block size {block_size} is not a power of two in 512..=1048576", path.display())]
    BlockSize { path: PathBuf, block_size: u32 },
    #[error("{}: file changed during the scan ({why}); scan it again when it is idle", path.display())]
    Changed { path: PathBuf, why: Stale },
    #[error(
        "{}: the zero map is too fragmented for a sidecar (over {limit}); use a larger --block-size",
        path.display()
    )]
    TooFragmented { path: PathBuf, limit: String },
    #[error(
        "{}: the sidecar is stale ({why}); run `gridvfs meta generate` on the file first",
        path.display()
    )]
    Stale { path: PathBuf, why: Stale },
}

impl MetaError {
    /// Whether the sidecar itself is unusable (damaged, not a sidecar, unreadable), as
    /// opposed to missing or out of date.
    pub fn is_bad_sidecar(&self) -> bool {
        matches!(
            self,
            MetaError::Malformed { .. } | MetaError::ReadSidecar { .. }
        )
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> MetaError + 'a {
    move |source| MetaError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// The sidecar's path for a data file: `DIR/.NAME.gvfsmeta`.
pub fn sidecar_path(data: &Path) -> Result<PathBuf, MetaError> {
    let no_name = || MetaError::NoSidecarName {
        path: data.to_path_buf(),
    };
    let name = data.file_name().ok_or_else(no_name)?;
    let side = sidecar_name(name.as_bytes()).ok_or_else(no_name)?;
    Ok(data.with_file_name(OsString::from_vec(side)))
}

/// The data file's name for a sidecar's name (`.NAME.gvfsmeta` → `NAME`).
pub fn data_name(sidecar: &[u8]) -> Option<&[u8]> {
    is_sidecar_name(sidecar).then(|| &sidecar[1..sidecar.len() - SUFFIX.len()])
}

/// Whether `name` is a sidecar or a sidecar being written: walks skip both.
pub fn is_meta_name(name: &[u8]) -> bool {
    is_sidecar_name(name)
        || (name.first() == Some(&b'.')
            && name
                .windows(TEMP_MARK.len())
                .any(|w| w == TEMP_MARK.as_bytes()))
}

/// `(data file, sidecar)` for a path that names either.
pub fn resolve(path: &Path) -> Result<(PathBuf, PathBuf), MetaError> {
    if let Some(data) = path.file_name().and_then(|n| data_name(n.as_bytes())) {
        let data = path.with_file_name(OsStr::from_bytes(data));
        return Ok((data, path.to_path_buf()));
    }
    Ok((path.to_path_buf(), sidecar_path(path)?))
}

fn mtime_of(m: &std::fs::Metadata) -> FileTime {
    FileTime {
        secs: m.mtime(),
        // Always 0..1e9 from the kernel.
        nsecs: m.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// Opens a data file for reading: never through a symbolic link, regular files only.
fn open_data(path: &Path) -> Result<(File, std::fs::Metadata), MetaError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::NotFound => MetaError::Missing {
                path: path.to_path_buf(),
                what: "data file",
            },
            Some(libc::ELOOP) => MetaError::NotRegular {
                path: path.to_path_buf(),
                kind: "symbolic link",
            },
            _ => io_err(path, "open")(e),
        })?;
    let m = f.metadata().map_err(io_err(path, "stat"))?;
    if !m.file_type().is_file() {
        return Err(MetaError::NotRegular {
            path: path.to_path_buf(),
            kind: if m.is_dir() {
                "directory"
            } else {
                "special file"
            },
        });
    }
    Ok((f, m))
}

/// Whether every byte of `b` is zero. Folds fixed 64-byte pieces with OR, which the
/// compiler turns into vector instructions, and stops at the first non-zero piece.
pub fn is_zero(b: &[u8]) -> bool {
    let mut pieces = b.chunks_exact(64);
    for p in &mut pieces {
        if p.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    pieces.remainder().iter().all(|&x| x == 0)
}

/// Alignment of the read buffer.
const PAGE: usize = 4096;

/// The `READ_BUF` bytes of `backing` (which has a page to spare) that start on a page
/// boundary. Measured on the 2-core dev VM, 1 GiB from the page cache: `read(2)` into a
/// page-aligned 4 MiB buffer takes 0.18 s, into malloc's (16 bytes past a page) 0.77 s.
fn page_aligned(backing: &mut [u8]) -> &mut [u8] {
    let off = backing.as_ptr().align_offset(PAGE);
    &mut backing[off..off + READ_BUF]
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// [`scan_with_progress`] without progress reports.
pub fn scan(path: &Path, opts: &ScanOptions) -> Result<Sidecar, MetaError> {
    scan_with_progress(path, opts, &mut |_| {})
}

/// Scans a regular file and returns its sidecar. `progress` is called after every read
/// with the bytes done so far. Fails if the file's size or mtime changed during the scan.
pub fn scan_with_progress(
    path: &Path,
    opts: &ScanOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Sidecar, MetaError> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) {
        return Err(MetaError::BlockSize {
            path: path.to_path_buf(),
            block_size: bs,
        });
    }
    let (f, before) = open_data(path)?;
    let (size, mtime) = (before.len(), mtime_of(&before));
    let blocks = size.div_ceil(bs as u64);
    // The bitmap holds any zero map; if even that is over the limit, the runs must do.
    let bitmap_fits = blocks.div_ceil(8) < (MAX_SIDECAR - 256) as u64;
    let max_runs = if bitmap_fits {
        MAX_SCAN_RUNS
    } else {
        (MAX_SIDECAR - 256) / 16
    };

    let mut hasher = opts.digest.then(blake3::Hasher::new);
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut backing = vec![0u8; READ_BUF + PAGE];
    let buf = page_aligned(&mut backing);
    let mut done = 0u64;
    let mut file = f.take(size);
    loop {
        let n = read_full(&mut file, buf).map_err(io_err(path, "read"))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if let Some(h) = hasher.as_mut() {
            h.update(chunk);
        }
        let first = done / bs as u64;
        for (i, block) in chunk.chunks(bs as usize).enumerate() {
            if !is_zero(block) {
                continue;
            }
            let b = first + i as u64;
            match runs.last_mut() {
                Some(r) if r.end == b => r.end += 1,
                _ => {
                    if runs.len() >= max_runs {
                        return Err(MetaError::TooFragmented {
                            path: path.to_path_buf(),
                            limit: format!("{max_runs} zero runs"),
                        });
                    }
                    runs.push(b..b + 1)
                }
            }
        }
        done += n as u64;
        progress(done);
    }

    // By path, as the proxies will look the file up: a file renamed over it is caught too.
    let after = std::fs::symlink_metadata(path).map_err(io_err(path, "stat"))?;
    let changed = |why| MetaError::Changed {
        path: path.to_path_buf(),
        why,
    };
    if done != size {
        return Err(changed(Stale::Size {
            sidecar: size,
            file: done,
        }));
    }
    let sidecar = Sidecar {
        size,
        mtime,
        digest: hasher.map(|h| *h.finalize().as_bytes()),
        actions: opts.actions,
        zeros: ZeroMap::from_runs(bs, blocks, runs),
        working_set: Vec::new(),
    };
    sidecar
        .check_fresh(after.len(), mtime_of(&after))
        .map_err(changed)?;
    Ok(sidecar)
}

/// Writes `sidecar` beside `data` atomically: a temp file in the same directory, fsync,
/// rename over `.NAME.gvfsmeta`, fsync of the directory. The sidecar's mode is 0644;
/// the directory is left as it is. Returns the sidecar's path.
pub fn write_sidecar(data: &Path, sidecar: &Sidecar) -> Result<PathBuf, MetaError> {
    let side = sidecar_path(data)?;
    let bytes = sidecar.encode();
    if bytes.len() > MAX_SIDECAR {
        return Err(MetaError::TooFragmented {
            path: data.to_path_buf(),
            limit: format!("{MAX_SIDECAR} bytes"),
        });
    }
    let side_name = side.file_name().expect("sidecar_path gives a file name");
    let mut tmp_name = side_name.as_bytes().to_vec();
    tmp_name.extend_from_slice(format!(".tmp.{}", std::process::id()).as_bytes());
    if tmp_name.len() > 255 {
        // The sidecar name is near the limit: one temp name per process will do, as a
        // process writes one sidecar at a time.
        tmp_name = format!(".gvfsmeta.tmp.{}", std::process::id()).into_bytes();
    }
    let tmp = side.with_file_name(OsString::from_vec(tmp_name));
    let result = write_then_rename(&tmp, &side, &bytes);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename is durable once the directory is.
    let dir = match side.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync the directory"))?;
    Ok(side)
}

fn write_then_rename(tmp: &Path, side: &Path, bytes: &[u8]) -> Result<(), MetaError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(io_err(tmp, "create"))?;
    f.write_all(bytes).map_err(io_err(tmp, "write"))?;
    // 0644 whatever the umask.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(tmp, "chmod"))?;
    f.sync_all().map_err(io_err(tmp, "fsync"))?;
    std::fs::rename(tmp, side).map_err(io_err(side, "rename the new sidecar into place"))
}

/// Reads and parses the sidecar of the data file `data`.
pub fn read_sidecar(data: &Path) -> Result<Sidecar, MetaError> {
    read_sidecar_at(&sidecar_path(data)?)
}

/// Reads and parses the sidecar at `side` (its own path), at most [`MAX_SIDECAR`] bytes.
pub fn read_sidecar_at(side: &Path) -> Result<Sidecar, MetaError> {
    let read_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            MetaError::Missing {
                path: side.to_path_buf(),
                what: "sidecar",
            }
        } else {
            MetaError::ReadSidecar {
                path: side.to_path_buf(),
                source,
            }
        }
    };
    // Non-blocking open: a FIFO planted as a sidecar must not hang the reader.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(side)
        .map_err(read_err)?;
    if !f.metadata().map_err(read_err)?.is_file() {
        return Err(read_err(io::Error::other("not a regular file")));
    }
    let mut buf = Vec::new();
    f.take(MAX_SIDECAR as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    Sidecar::parse(&buf).map_err(|source| MetaError::Malformed {
        path: side.to_path_buf(),
        source,
    })
}

/// The sidecar of `data`, checked against the file as it is now (size and mtime, a
/// stat): what a change to the sidecar alone (`gridvfs meta workset`) starts from, so
/// that it never writes a sidecar describing another version of the file.
pub fn read_fresh_sidecar(data: &Path) -> Result<Sidecar, MetaError> {
    let sidecar = read_sidecar(data)?;
    let (_, m) = open_data(data)?;
    sidecar
        .check_fresh(m.len(), mtime_of(&m))
        .map_err(|why| MetaError::Stale {
            path: sidecar_path(data).unwrap_or_else(|_| data.to_path_buf()),
            why,
        })?;
    Ok(sidecar)
}

/// What [`keep_working_set`] did with the working set of the sidecar being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptWorkingSet {
    /// There was none (no old sidecar, an unreadable one, or no working set in it).
    None,
    /// Its ranges (this many) are in the new sidecar.
    Kept(usize),
    /// Its ranges (this many) were left out: one ends past the file's new size.
    Dropped(usize),
}

/// Carries the working set of `data`'s current sidecar over into `new` (a new scan of
/// the file) when every range still fits the new size. A working set is a profile of
/// which parts a VM reads first: regenerating the zero map (the file was rewritten, or
/// another block size) does not make it wrong, and re-recording it costs a VM run; a
/// range past the new end of file does, and then none is kept
/// (`gridvfs meta workset --clear` drops one on purpose).
pub fn keep_working_set(data: &Path, new: &mut Sidecar) -> KeptWorkingSet {
    let Ok(old) = read_sidecar(data) else {
        return KeptWorkingSet::None;
    };
    let n = old.working_set.len();
    if n == 0 {
        KeptWorkingSet::None
    } else if old.working_set.iter().all(|r| r.end <= new.size) {
        new.working_set = old.working_set;
        KeptWorkingSet::Kept(n)
    } else {
        KeptWorkingSet::Dropped(n)
    }
}

/// How thoroughly [`verify`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Size and mtime only (a stat).
    Quick,
    /// Also read the whole file: digest (when the sidecar has one) and zero map.
    Full,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The sidecar describes the file. `content` says whether the content was read
    /// (digest and zero map compared) or only size and mtime.
    Fresh {
        content: bool,
    },
    Stale(Why),
}

/// Why a sidecar is stale.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("{0}")]
    Attr(#[from] Stale),
    #[error("content digest differs")]
    Digest,
    #[error("zero blocks differ: sidecar says {sidecar}, file has {file}")]
    ZeroMap { sidecar: u64, file: u64 },
}

/// Whether the sidecar of `data` still describes it. Errors are for a missing or
/// unreadable file or sidecar; a sidecar that is out of date is `Ok(Verdict::Stale)`.
pub fn verify(
    data: &Path,
    check: Check,
    progress: &mut dyn FnMut(u64),
) -> Result<Verdict, MetaError> {
    let sidecar = read_sidecar(data)?;
    let (_, m) = open_data(data)?;
    if let Err(why) = sidecar.check_fresh(m.len(), mtime_of(&m)) {
        return Ok(Verdict::Stale(why.into()));
    }
    if check == Check::Quick {
        return Ok(Verdict::Fresh { content: false });
    }
    let opts = ScanOptions {
        block_size: sidecar.zeros.block_size,
        actions: sidecar.actions,
        digest: sidecar.digest.is_some(),
    };
    let now = match scan_with_progress(data, &opts, progress) {
        Ok(s) => s,
        Err(MetaError::Changed { why, .. }) => return Ok(Verdict::Stale(why.into())),
        Err(e) => return Err(e),
    };
    if let Err(why) = sidecar.check_fresh(now.size, now.mtime) {
        return Ok(Verdict::Stale(why.into()));
    }
    if now.digest != sidecar.digest {
        return Ok(Verdict::Stale(Why::Digest));
    }
    if now.zeros != sidecar.zeros {
        return Ok(Verdict::Stale(Why::ZeroMap {
            sidecar: sidecar.zeros.zero_blocks(),
            file: now.zeros.zero_blocks(),
        }));
    }
    Ok(Verdict::Fresh { content: true })
}

#[cfg(test)]
#[path = "generate_tests.rs"]
mod tests;
