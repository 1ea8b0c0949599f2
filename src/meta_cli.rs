//! `gridvfs meta generate|show|verify|workset`: the binary's half of the sidecar tools. Arguments
//! come in through clap, files go through `gridvfs::meta::generate`, and what a person
//! reads comes out here: one line per file on stdout, errors and skips on stderr, a
//! progress line on stderr when it is a terminal. Exit codes are picked here and only here.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use gridvfs::meta::format::VERSION;
use gridvfs::meta::generate::{
    self, Check, KeptWorkingSet, MetaError, ScanOptions, Verdict, is_meta_name, read_sidecar_at,
    resolve,
};
use gridvfs::meta::{Actions, Codec, Fetch, FileTime, Sidecar, Writeback, sidecar_name};

#[derive(Subcommand)]
pub enum MetaCmd {
    /// Scan files (directories recursively) and write a sidecar `.NAME.gvfsmeta` beside
    /// each: size, mtime, BLAKE3 digest, zero blocks, actions. Exit 1 if any file failed.
    Generate {
        /// Zero-map block size: a power of two from 512 to 1MiB (e.g. 4096, 64KiB).
        #[arg(long, default_value = "4096", value_parser = block_size)]
        block_size: u32,
        /// How the client proxy fetches the file.
        #[arg(long, value_enum, default_value_t = FetchArg::Blocks)]
        fetch: FetchArg,
        /// Compression on the file channel (whole-file fetch and write-back).
        #[arg(long, value_enum, default_value_t = CodecArg::Zstd)]
        codec: CodecArg,
        /// Compression level: zstd 1..=19, gzip 1..=9; 0 is the codec's default.
        #[arg(long, default_value_t = 0)]
        level: i32,
        /// How dirty data goes back at a flush.
        #[arg(long, value_enum, default_value_t = FetchArg::Blocks)]
        writeback: FetchArg,
        /// Skip the BLAKE3 digest (faster; `meta verify` then compares the zero map only).
        #[arg(long)]
        no_digest: bool,
        /// Files and directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print every field of a sidecar and whether it is fresh (size and mtime) against
    /// its data file. FILE is the data file or the sidecar.
    Show { file: PathBuf },
    /// Check sidecars against their data files: size and mtime, then (unless --quick) a
    /// full read comparing digest and zero map. Exit 0 all fresh, 1 any stale or missing,
    /// 2 any sidecar unreadable or malformed.
    Verify {
        /// Size and mtime only; do not read the files.
        #[arg(long)]
        quick: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a working set (the text `gridvfs workset` prints: `OFFSET LEN` per line)
    /// into the sidecar of DATAFILE, replacing the one it holds; or remove it (--clear).
    /// The sidecar must exist and be fresh (`gridvfs meta generate` first). Exit 1 if
    /// nothing was written.
    Workset {
        /// The working set: a file, or - for standard input.
        #[arg(
            long,
            value_name = "FILE|-",
            conflicts_with = "clear",
            required_unless_present = "clear"
        )]
        from: Option<PathBuf>,
        /// Remove the working set from the sidecar.
        #[arg(long)]
        clear: bool,
        /// The data file (or its sidecar).
        #[arg(value_name = "DATAFILE")]
        file: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FetchArg {
    Blocks,
    WholeFile,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodecArg {
    Zstd,
    Gzip,
}

fn block_size(s: &str) -> Result<u32, String> {
    let n = gridvfs::config::units::parse_size(s)?;
    let ok = n.is_power_of_two() && (512..=1 << 20).contains(&n);
    ok.then_some(n as u32)
        .ok_or_else(|| format!("{n} is not a power of two from 512 to 1MiB"))
}

pub fn run(cmd: MetaCmd) -> ExitCode {
    match cmd {
        MetaCmd::Generate {
            block_size,
            fetch,
            codec,
            level,
            writeback,
            no_digest,
            paths,
        } => {
            let codec = match codec {
                CodecArg::Zstd => Codec::Zstd,
                CodecArg::Gzip => Codec::Gzip,
            };
            let max = if codec == Codec::Zstd { 19 } else { 9 };
            if !(0..=max).contains(&level) {
                eprintln!("gridvfs: --level {level}: out of range 0..={max} for this codec");
                return ExitCode::from(2);
            }
            let opts = ScanOptions {
                block_size,
                actions: Actions {
                    fetch: match fetch {
                        FetchArg::Blocks => Fetch::Blocks,
                        FetchArg::WholeFile => Fetch::WholeFile,
                    },
                    codec,
                    level,
                    writeback: match writeback {
                        FetchArg::Blocks => Writeback::Blocks,
                        FetchArg::WholeFile => Writeback::WholeFile,
                    },
                },
                digest: !no_digest,
            };
            generate_all(&paths, &opts)
        }
        MetaCmd::Show { file } => show(&file),
        MetaCmd::Verify { quick, files } => verify_all(&files, quick),
        MetaCmd::Workset {
            from,
            clear: _,
            file,
        } => workset(from.as_deref(), &file),
    }
}

/// A progress line on stderr, drawn only on a terminal and at most ten times a second.
struct Progress {
    tty: bool,
    label: String,
    total: u64,
    start: Instant,
    /// When the line was last drawn (None: never, so nothing to erase).
    drawn: Option<Instant>,
}

impl Progress {
    fn new(label: &Path, total: u64) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            label: label.display().to_string(),
            total,
            start: Instant::now(),
            drawn: None,
        }
    }

    fn update(&mut self, done: u64) {
        let due = self
            .drawn
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if !self.tty || !due {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r\x1b[2K{}: {:.1} / {:.1} MiB, {:.0} MiB/s",
            self.label,
            mib(done),
            mib(self.total),
            mib(done) / secs
        );
        self.drawn = Some(Instant::now());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.drawn.is_some() {
            eprint!("\r\x1b[2K");
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Runs `f` with a progress reporter for `path` (its size from a stat, 0 if none).
fn with_progress<T>(path: &Path, f: impl FnOnce(&mut dyn FnMut(u64)) -> T) -> T {
    let total = std::fs::symlink_metadata(path).map_or(0, |m| m.len());
    let mut p = Progress::new(path, total);
    f(&mut |done| p.update(done))
}

/// Totals of a `generate` run.
#[derive(Default)]
struct Tally {
    done: u64,
    failed: u64,
    skipped: u64,
}

fn generate_all(paths: &[PathBuf], opts: &ScanOptions) -> ExitCode {
    let mut t = Tally::default();
    for p in paths {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => walk(p, opts, &mut t),
            _ => generate_one(p, opts, &mut t),
        }
    }
    if t.skipped + t.failed > 0 || t.done > 1 {
        eprintln!(
            "gridvfs: {} sidecars written, {} files skipped, {} failed",
            t.done, t.skipped, t.failed
        );
    }
    if t.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn generate_one(path: &Path, opts: &ScanOptions, t: &mut Tally) {
    let r =
        with_progress(path, |p| generate::scan_with_progress(path, opts, p)).and_then(|mut s| {
            let kept = generate::keep_working_set(path, &mut s);
            Ok((generate::write_sidecar(path, &s)?, s, kept))
        });
    match r {
        Ok((side, s, kept)) => {
            t.done += 1;
            let ws = match kept {
                KeptWorkingSet::None => String::new(),
                KeptWorkingSet::Kept(n) => format!(", working set of {n} ranges kept"),
                KeptWorkingSet::Dropped(n) => format!(
                    ", working set of {n} ranges dropped (it reaches past the end of the file)"
                ),
            };
            println!(
                "{}: {} bytes, {:.2}% zero, sidecar {}{ws}",
                path.display(),
                s.size,
                percent(s.zero_bytes(), s.size),
                side.display()
            );
        }
        Err(e) => {
            t.failed += 1;
            eprintln!("gridvfs: {e}");
        }
    }
}

/// Walks `root` depth-first in name order without following symbolic links; sidecars
/// (and sidecars being written) are passed over silently, other skips are reported.
fn walk(root: &Path, opts: &ScanOptions, t: &mut Tally) {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).and_then(|rd| rd.collect::<Result<Vec<_>, _>>());
        let mut entries = match entries {
            Ok(e) => e,
            Err(e) => {
                t.failed += 1;
                eprintln!("gridvfs: {}: cannot list the directory: {e}", dir.display());
                continue;
            }
        };
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            let (name, path) = (e.file_name(), e.path());
            let name = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()).to_vec();
            if is_meta_name(&name) {
                continue;
            }
            let skip = match e.file_type() {
                Ok(ft) if ft.is_dir() => {
                    subdirs.push(path);
                    continue;
                }
                Ok(ft) if ft.is_symlink() => "a symbolic link",
                Ok(ft) if !ft.is_file() => "not a regular file",
                Ok(_) if sidecar_name(&name).is_none() => "its sidecar's name would pass 255 bytes",
                Ok(_) => {
                    generate_one(&path, opts, t);
                    continue;
                }
                Err(_) => "cannot tell its type",
            };
            t.skipped += 1;
            eprintln!("gridvfs: skipped {}: {skip}", path.display());
        }
        // Popped from the end: push in reverse to visit in name order.
        dirs.extend(subdirs.into_iter().rev());
    }
}

/// Exit code for an error about a sidecar: 2 if the sidecar itself is unusable.
fn severity(e: &MetaError) -> u8 {
    if e.is_bad_sidecar() { 2 } else { 1 }
}

fn show(path: &Path) -> ExitCode {
    let shown = resolve(path).and_then(|(data, side)| {
        let s = read_sidecar_at(&side)?;
        Ok((data, side, s))
    });
    let (data, side, s) = match shown {
        Ok(v) => v,
        Err(e) => {
            eprintln!("gridvfs: {e}");
            return ExitCode::from(severity(&e));
        }
    };
    print!("{}", describe(&data, &side, &s));
    ExitCode::SUCCESS
}

/// Every field of a sidecar, one per line, and its freshness against `data`.
fn describe(data: &Path, side: &Path, s: &Sidecar) -> String {
    use std::fmt::Write;
    let z = &s.zeros;
    let mut o = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(o, "{:<13}{v}", format!("{k}:"));
    };
    line("sidecar", side.display().to_string());
    line("version", VERSION.to_string());
    line("data file", data.display().to_string());
    line("size", format!("{} bytes ({:.2} MiB)", s.size, mib(s.size)));
    line("mtime", show_time(s.mtime));
    line(
        "digest",
        s.digest.map_or("none".into(), |d| {
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            format!("blake3 {hex}")
        }),
    );
    line("block size", format!("{} bytes", z.block_size));
    line("blocks", z.blocks.to_string());
    line(
        "zero blocks",
        format!(
            "{} ({:.2}% of blocks; {} bytes, {:.2}% of the file)",
            z.zero_blocks(),
            percent(z.zero_blocks(), z.blocks),
            s.zero_bytes(),
            percent(s.zero_bytes(), s.size)
        ),
    );
    let runs = z.runs();
    let mut r = runs
        .iter()
        .take(5)
        .map(|r| format!("{}..{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(", ");
    if runs.len() > 5 {
        r.push_str(&format!(", … ({} more)", runs.len() - 5));
    }
    let sep = if runs.is_empty() { "" } else { ": " };
    line("zero runs", format!("{}{sep}{r}", runs.len()));
    let a = &s.actions;
    let level = if a.level == 0 {
        "default".to_string()
    } else {
        a.level.to_string()
    };
    line(
        "actions",
        format!(
            "fetch {}, codec {} (level {level}), write-back {}",
            if a.fetch == Fetch::WholeFile {
                "whole-file"
            } else {
                "blocks"
            },
            if a.codec == Codec::Gzip {
                "gzip"
            } else {
                "zstd"
            },
            if a.writeback == Writeback::WholeFile {
                "whole-file"
            } else {
                "blocks"
            },
        ),
    );
    let ws_bytes: u64 = s.working_set.iter().map(|r| r.end - r.start).sum();
    line(
        "working set",
        format!(
            "{} ranges, {ws_bytes} bytes ({:.2}% of the file)",
            s.working_set.len(),
            percent(ws_bytes, s.size)
        ),
    );
    let fresh = match std::fs::metadata(data) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            let now = FileTime {
                secs: m.mtime(),
                nsecs: m.mtime_nsec().clamp(0, 999_999_999) as u32,
            };
            match s.check_fresh(m.len(), now) {
                Ok(()) => "fresh (size and mtime match; `gridvfs meta verify` reads the content)"
                    .to_string(),
                Err(why) => format!("stale ({why})"),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "data file missing".into(),
        Err(e) => format!("data file unreadable ({e})"),
    };
    line("freshness", fresh);
    o
}

/// `secs.nanos (YYYY-MM-DD HH:MM:SS UTC)`.
fn show_time(t: FileTime) -> String {
    // Days to a civil date (Howard Hinnant's algorithm).
    let (days, rem) = (t.secs.div_euclid(86_400), t.secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{t} ({y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC)",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn verify_all(files: &[PathBuf], quick: bool) -> ExitCode {
    let check = if quick { Check::Quick } else { Check::Full };
    let mut worst = 0u8;
    for f in files {
        let r = resolve(f).and_then(|(data, _)| {
            with_progress(&data, |p| generate::verify(&data, check, p)).map(|v| (data, v))
        });
        match r {
            Ok((data, Verdict::Fresh { content })) => {
                let what = if content {
                    "size, mtime and content match"
                } else {
                    "size and mtime match; content not read"
                };
                println!("{}: fresh ({what})", data.display());
            }
            Ok((data, Verdict::Stale(why))) => {
                worst = worst.max(1);
                println!("{}: stale ({why})", data.display());
            }
            Err(e) => {
                worst = worst.max(severity(&e));
                eprintln!("gridvfs: {e}");
            }
        }
    }
    ExitCode::from(worst)
}

/// `meta workset`: the data file's fresh sidecar with its working set replaced by the
/// ranges read from `from` (None: cleared), written as `generate` writes sidecars.
fn workset(from: Option<&Path>, file: &Path) -> ExitCode {
    let data = match resolve(file) {
        Ok((data, _)) => data,
        Err(e) => {
            eprintln!("gridvfs: {e}");
            return ExitCode::from(1);
        }
    };
    let mut sidecar = match generate::read_fresh_sidecar(&data) {
        Ok(s) => s,
        Err(e) => {
            let hint = match &e {
                MetaError::Missing {
                    what: "sidecar", ..
                }
                | MetaError::Malformed { .. }
                | MetaError::ReadSidecar { .. } => {
                    format!("; run `gridvfs meta generate {}` first", data.display())
                }
                _ => String::new(),
            };
            eprintln!("gridvfs: {e}{hint}");
            return ExitCode::from(1);
        }
    };
    let ranges = match from {
        None => Ok(Vec::new()),
        Some(p) if p == Path::new("-") => {
            gridvfs::meta::workset::parse(std::io::stdin().lock(), sidecar.size)
                .map_err(|e| format!("standard input: {e}"))
        }
        Some(p) => std::fs::File::open(p)
            .map_err(|e| format!("{}: cannot open: {e}", p.display()))
            .and_then(|f| {
                gridvfs::meta::workset::parse(std::io::BufReader::new(f), sidecar.size)
                    .map_err(|e| format!("{}: {e}", p.display()))
            }),
    };
    sidecar.working_set = match ranges {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "gridvfs: {e} (the sidecar of {} is unchanged)",
                data.display()
            );
            return ExitCode::from(1);
        }
    };
    match generate::write_sidecar(&data, &sidecar) {
        Ok(side) => {
            let bytes: u64 = sidecar.working_set.iter().map(|r| r.end - r.start).sum();
            println!(
                "{}: working set of {} ranges, {bytes} bytes ({:.2}% of the file), sidecar {}",
                data.display(),
                sidecar.working_set.len(),
                percent(bytes, sidecar.size),
                side.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gridvfs: {e}");
            ExitCode::from(1)
        }
    }
}
