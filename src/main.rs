//! The `gridvfs` binary: parse the command line, load and validate the config, run.
//! Library code returns typed errors; only here do they become messages and exit codes.

mod meta_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gridvfs::config::Config;

#[derive(Parser)]
#[command(
    name = "gridvfs",
    version,
    about = "User-level NFSv3 proxy with an on-disk cache for VM images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy in the foreground until SIGTERM or SIGINT.
    Run {
        /// The TOML config file (see docs/config.md).
        #[arg(short, long)]
        config: PathBuf,
        /// Write the bound address (ip:port) here once clients can connect.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file exactly as `run` would, and print the result.
    CheckConfig {
        /// The TOML config file.
        config: PathBuf,
    },
    /// Write a new ed25519 key pair in OpenSSH format: OUT (private, mode 0600; never
    /// overwritten) and OUT.pub. Prints the public line and its SHA256 fingerprint.
    Keygen {
        /// Where the private key goes.
        #[arg(long)]
        out: PathBuf,
        /// The key's comment (default: gridvfs@HOSTNAME).
        #[arg(long)]
        comment: Option<String>,
    },
    /// Ask a running proxy for its counters (JSON) over its control socket.
    Status {
        /// The proxy's `[control] socket`.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Make a running proxy write back its dirty data (and with --drop, then drop its
    /// cache); returns when done.
    Flush {
        #[arg(long)]
        socket: PathBuf,
        /// Drop the whole cache after writing back.
        #[arg(long)]
        drop: bool,
        /// Write back only this file: its path as the client mounted it
        /// (`/export/dir/file`), or relative to the one mounted export.
        #[arg(long)]
        file: Option<String>,
    },
    /// Print the working set a running proxy recorded for a file (`[meta]
    /// record_working_set`): `OFFSET LEN` per line, the text `gridvfs meta workset
    /// --from` writes into the file's sidecar.
    Workset {
        #[arg(long)]
        socket: PathBuf,
        /// The file's path as the client mounted it (`/export/dir/file`), or relative to
        /// the one mounted export.
        path: String,
    },
    /// Queue a running proxy's transfers of files a VM is about to read: each file's
    /// whole-file fetch or its working set, as its sidecar says (what its first READ
    /// would start); they run one after another, in the order given. Returns once they
    /// are queued; prints one JSON line per file.
    Prefetch {
        #[arg(long)]
        socket: PathBuf,
        /// Make the LOOKUPs and transfers as this AUTH_SYS identity, `UID:GID` or
        /// `UID:GID:GID,GID,...` (supplementary groups); default: the caller's uid and
        /// gid. Pass the session user's when middleware runs as root against a server
        /// that squashes root.
        #[arg(long = "as", value_name = "UID:GID")]
        as_: Option<String>,
        /// Each file's path as the client mounted it (`/export/dir/file`), or relative to
        /// the one mounted export.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Make, inspect and check metadata sidecars (`.NAME.gvfsmeta`, docs/sidecar-format.md).
    Meta {
        #[command(subcommand)]
        cmd: meta_cli::MetaCmd,
    },
}

/// Builds a tokio runtime, or says why not.
fn runtime(mut b: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    b.enable_all()
        .build()
        .map_err(|e| eprintln!("gridvfs: cannot start the runtime: {e}"))
        .ok()
}

/// Sends one control request and prints the reply; exit 0 if it says ok.
fn control(socket: &std::path::Path, line: &str) -> ExitCode {
    let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::from(1);
    };
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let progress = |line: &str| {
        // {"progress":{"running":..,"bytes_total":..,"bytes_sent":..,"bytes_done":..,"bytes_left":N,"rate_bytes_per_s":R}}
        let num = |key: &str| {
            line.split(&format!("\"{key}\":"))
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let mib = |b: f64| b / (1 << 20) as f64;
        let text = format!(
            "flush: {:.1} MiB left of {:.1} MiB, {:.1} MiB/s, {:.1} MiB committed",
            mib(num("bytes_left")),
            mib(num("bytes_total")),
            mib(num("rate_bytes_per_s")),
            mib(num("bytes_done"))
        );
        if tty {
            eprint!("\r{text}   ");
        } else {
            eprintln!("{text}");
        }
    };
    let r = rt.block_on(gridvfs::control::request(socket, line, progress));
    if tty {
        eprintln!();
    }
    match r {
        Ok(reply) => {
            println!("{reply}");
            if reply.starts_with("{\"ok\":true") {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!(
                "gridvfs: cannot reach the control socket {}: {e}",
                socket.display()
            );
            ExitCode::from(1)
        }
    }
}

/// Sends one `prefetch PATH` request per path, in order, and prints the replies; exit 0
/// if every one says ok.
fn prefetch(socket: &std::path::Path, as_: Option<&str>, paths: &[String]) -> ExitCode {
    if paths.iter().any(|p| p.contains('\n')) {
        eprintln!("gridvfs: PATH: a path with a newline");
        return ExitCode::from(2);
    }
    if as_.is_some_and(|a| a.contains([' ', '\n'])) {
        eprintln!("gridvfs: --as: UID:GID[:GID,...] without spaces");
        return ExitCode::from(2);
    }
    let head = as_.map_or("prefetch".to_string(), |a| format!("prefetch --as {a}"));
    let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::from(1);
    };
    // One at a time: the proxy runs the transfers in the order it is asked.
    let replies = rt.block_on(async {
        let mut replies = Vec::new();
        for p in paths {
            replies.push(gridvfs::control::request(socket, &format!("{head} {p}"), |_| {}).await);
        }
        replies
    });
    let mut ok = true;
    for r in replies {
        match r {
            Ok(reply) => {
                ok &= reply.starts_with("{\"ok\":true");
                println!("{reply}");
            }
            Err(e) => {
                ok = false;
                eprintln!(
                    "gridvfs: cannot reach the control socket {}: {e}",
                    socket.display()
                );
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Asks the proxy for a file's recorded working set and prints it as text; exit 1 with
/// the proxy's reason if it has none.
fn workset(socket: &std::path::Path, path: &str) -> ExitCode {
    if path.contains('\n') {
        eprintln!("gridvfs: PATH: a path with a newline");
        return ExitCode::from(2);
    }
    let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::from(1);
    };
    match rt.block_on(gridvfs::control::workset_request(socket, path)) {
        Ok(d) => {
            use gridvfs::meta::workset::format;
            print!("{}", format(&d.path, d.size, &d.ranges, d.truncated));
            if d.truncated {
                eprintln!(
                    "gridvfs: warning: the recording of {path} was truncated at the range \
                     limit; READs after that are missing"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gridvfs: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Status { socket } => control(&socket, "status"),
        Cmd::Meta { cmd } => meta_cli::run(cmd),
        Cmd::Workset { socket, path } => workset(&socket, &path),
        Cmd::Prefetch { socket, as_, paths } => prefetch(&socket, as_.as_deref(), &paths),
        Cmd::Keygen { out, comment } => {
            let comment = comment.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into());
                format!("gridvfs@{host}")
            });
            match gridvfs::ssh::keys::keygen(&out, &comment) {
                Ok(public) => {
                    let fp = gridvfs::ssh::keys::parse_authorized_line(&public)
                        .map(|(k, _)| gridvfs::ssh::keys::fingerprint(&k))
                        .unwrap_or_default();
                    println!("{public}");
                    eprintln!(
                        "gridvfs: wrote {} and {}.pub ({fp})",
                        out.display(),
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gridvfs: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Flush { socket, drop, file } => {
            let mut line = String::from("flush");
            if drop {
                line.push_str(" --drop");
            }
            if let Some(f) = file {
                if f.contains('\n') {
                    eprintln!("gridvfs: --file: a path with a newline");
                    return ExitCode::from(2);
                }
                line.push_str(" --file ");
                line.push_str(&f);
            }
            control(&socket, &line)
        }
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (listen {}, upstream nfs {} mount {})",
                    config.display(),
                    c.listen.addr,
                    c.upstream.nfs,
                    c.upstream.mount
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gridvfs: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config, ready_file } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("gridvfs: {e}");
                    return ExitCode::from(2);
                }
            };
            gridvfs::daemon::init_logging(&cfg);
            gridvfs::daemon::tune_allocator();
            let Some(rt) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
                return ExitCode::from(1);
            };
            match rt.block_on(gridvfs::daemon::run(cfg, ready_file.as_deref())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("gridvfs: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
