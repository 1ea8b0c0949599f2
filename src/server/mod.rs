//! The server role: the proxy next to the real NFS server (paper §3.1, Fig. 2).
//!
//! Clients reach it through an authenticated channel (gridvfs's SSH server, or a stock
//! sshd forwarding to its loopback port); each connection carries an [`Account`]. Before
//! a call is forwarded:
//! - `identity`: its AUTH_SYS credential is rewritten to the account (fixed uid/gid/
//!   groups, or uid/gid tables), so a grid user's short-lived identity lands on the
//!   account that owns the files; uid 0 never passes unless the config allows it;
//!   AUTH_NONE is mapped or refused.
//! - `handles`: every file handle in its arguments must be one this proxy issued (seen
//!   in a MNT, LOOKUP, CREATE, MKDIR, SYMLINK, MKNOD or READDIRPLUS reply for an allowed
//!   export); any other gets NFS3ERR_STALE without reaching the server. Issued handles
//!   are kept on disk, so confinement survives a restart. Handles themselves pass
//!   through unchanged (no growth across cascades).
//! - MNT of a path not in `server.exports` gets MNT3ERR_ACCES; EXPORT replies list only
//!   the allowed exports.

pub mod filechan;
mod handles;
pub mod identity;

use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tracing::{debug, warn};

pub use handles::HandleSet;
pub use identity::{Denied, Rewrite, credential_rewrite, rewrite_credential};

use crate::config::{Account, ServerConfig};
use crate::nfs3::mount::{self, MountArgs, MountProc, MountRes, Mountres3, Mountstat3};
use crate::nfs3::{self, Args, Nfsstat3, Proc, Res};
use crate::rpc::msg::{AcceptStat, accepted_reply};
use crate::rpc::{CallHeader, ReplyKind, parse_reply};

/// The server role's shared state.
pub struct Policy {
    exports: Vec<Vec<u8>>,
    handles: HandleSet,
    accounts: Vec<Arc<Account>>,
    tcp_account: Option<Arc<Account>>,
}

/// What to do with a call from a confined client.
pub enum Admit {
    /// Forward the record after this rewrite of its credential (`Rewrite::apply`).
    Forward(Rewrite),
    /// Answer with this reply; nothing reaches the server.
    Reply(BytesMut),
    /// A MNT of a directory below an export: answered by `mount_below` (MNT of the
    /// export, then LOOKUP of each component), never by the server's mountd, which
    /// would follow symlinks out of the export.
    MountBelow {
        /// The call with its credential rewritten.
        call: BytesMut,
        export: Vec<u8>,
        components: Vec<Vec<u8>>,
    },
}

impl Policy {
    /// Opens the issued-handle store in `state_dir` (created if missing).
    pub fn open(cfg: &ServerConfig) -> std::io::Result<Policy> {
        let accounts: Vec<Arc<Account>> = cfg.accounts.iter().cloned().map(Arc::new).collect();
        let tcp_account = cfg
            .tcp_account
            .as_ref()
            .and_then(|n| accounts.iter().find(|a| &a.name == n).cloned());
        let mut exports: Vec<Vec<u8>> = cfg
            .exports
            .iter()
            .map(|e| e.trim_end_matches('/').as_bytes().to_vec())
            .map(|e| if e.is_empty() { b"/".to_vec() } else { e })
            .collect();
        exports.sort();
        exports.dedup();
        Ok(Policy {
            handles: HandleSet::open_for(&cfg.state_dir.join("handles"), &exports)?,
            exports,
            accounts,
            tcp_account,
        })
    }

    /// The account of a client authenticated by the key with this SHA256 fingerprint:
    /// the account that lists it, else one that lists `*`.
    pub fn account_for_key(&self, fingerprint: &str) -> Option<Arc<Account>> {
        let exact = self
            .accounts
            .iter()
            .find(|a| a.keys.iter().any(|k| k == fingerprint));
        exact
            .or_else(|| {
                self.accounts
                    .iter()
                    .find(|a| a.keys.iter().any(|k| k == "*"))
            })
            .cloned()
    }

    /// The account of clients on the plain TCP port, if they are allowed at all.
    pub fn tcp_account(&self) -> Option<Arc<Account>> {
        self.tcp_account.clone()
    }

    /// Whether `fh` was issued to a client (it is inside an allowed export).
    pub fn was_issued(&self, fh: &[u8]) -> bool {
        self.handles.contains(fh)
    }

    /// Handles issued so far (for status and tests).
    pub fn issued(&self) -> usize {
        self.handles.len()
    }

    /// For a path strictly below an allowed export (and allowed): the export and the
    /// path's components below it (`.` and empty ones dropped).
    fn below_export(&self, path: &[u8]) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
        let p = trim_slash(path);
        if !self.export_allowed(p) || self.exports.iter().any(|e| e.as_slice() == p) {
            return None;
        }
        let e = self
            .exports
            .iter()
            .filter(|e| p.starts_with(e) && (e.as_slice() == b"/" || p[e.len()] == b'/'))
            .max_by_key(|e| e.len())?;
        let comps: Vec<Vec<u8>> = p[e.len()..]
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(|c| c.to_vec())
            .collect();
        if comps.is_empty() {
            return None;
        }
        Some((e.clone(), comps))
    }

    /// An allowed export, or a directory below one (clients such as libnfs mount the
    /// directory of the file they open). `..` components are never allowed.
    fn export_allowed(&self, path: &[u8]) -> bool {
        let p = trim_slash(path);
        if p.split(|&b| b == b'/').any(|c| c == b"..") {
            return false;
        }
        self.exports.iter().any(|e| {
            p == e.as_slice() || (p.starts_with(e) && (e.as_slice() == b"/" || p[e.len()] == b'/'))
        })
    }

    /// Checks and rewrites one call record of a client acting as `account`.
    pub fn admit(&self, account: &Account, rec: &[u8]) -> Admit {
        let Ok(h) = CallHeader::parse(rec) else {
            // dispatch::route answered malformed headers already; never forward one.
            return Admit::Reply(accepted_reply(0, AcceptStat::GARBAGE_ARGS));
        };
        let args = &rec[h.args_at..];
        // NULL touches nothing; clients ping with AUTH_NONE (mount.nfs does).
        if h.proc_ == 0 {
            return Admit::Forward(Rewrite::none());
        }
        match (h.prog, h.vers) {
            (nfs3::PROGRAM, nfs3::VERSION) => {
                let p = Proc(h.proc_);
                if let Ok(a) = Args::decode(p, args) {
                    for fh in handles_in(&a) {
                        if !self.handles.contains(fh) {
                            debug!(
                                proc_ = p.name(),
                                len = fh.len(),
                                "handle not issued by this proxy: STALE"
                            );
                            return Admit::Reply(nfs_error(h.xid, p, Nfsstat3::STALE));
                        }
                    }
                }
            }
            (mount::PROGRAM, mount::VERSION) => {
                let mnt = match MountArgs::decode(MountProc(h.proc_), args) {
                    Ok(MountArgs::Mnt(path)) => Some(path),
                    _ => None,
                };
                if let Some((export, components)) = mnt.and_then(|p| self.below_export(p)) {
                    return match rewrite_credential(account, rec, &h) {
                        Ok(call) => Admit::MountBelow {
                            call,
                            export,
                            components,
                        },
                        Err(d) => Admit::Reply(d.reply(h.xid)),
                    };
                }
                if let Some(path) = mnt
                    && !self.export_allowed(path)
                {
                    warn!(side = "client", account = %account.name,
                        path = %String::from_utf8_lossy(path), "MNT of a path that is not an allowed export");
                    let mut r = accepted_reply(h.xid, AcceptStat::SUCCESS);
                    MountRes::Mnt(Mountres3::Fail(Mountstat3::ACCES)).encode(&mut r);
                    return Admit::Reply(r);
                }
            }
            _ => {}
        }
        match credential_rewrite(account, rec, &h) {
            Ok(r) => Admit::Forward(r),
            Err(d) => Admit::Reply(d.reply(h.xid)),
        }
    }

    /// Looks at a reply on its way to the client: records the handles it issues, and
    /// filters EXPORT lists. Returns a replacement reply if it changed one. Must run
    /// before the client sees the reply (the client may use a handle at once).
    pub fn observe(&self, call: &[u8], reply: &[u8]) -> Option<BytesMut> {
        let h = CallHeader::parse(call).ok()?;
        let Ok((_, ReplyKind::Accepted { stat, results_at })) = parse_reply(reply) else {
            return None;
        };
        if stat != AcceptStat::SUCCESS {
            return None;
        }
        let body = &reply[results_at..];
        match (h.prog, h.vers) {
            (nfs3::PROGRAM, nfs3::VERSION) => {
                let p = Proc(h.proc_);
                if !issues_handles(p) {
                    return None;
                }
                // A LOOKUP of ".." at an export's root would climb out of it: what ".."
                // names is never issued here (inside an export the parent was issued
                // on the way down anyway).
                if p == Proc::LOOKUP
                    && let Ok(Args::Lookup(a)) = Args::decode(p, &call[h.args_at..])
                    && a.what.name == b".."
                {
                    return None;
                }
                match Res::decode(p, body) {
                    Ok(res) => self.record_nfs(&res),
                    Err(e) => {
                        debug!(proc_ = p.name(), error = %e, "reply not decodable; no handles recorded")
                    }
                }
                None
            }
            (mount::PROGRAM, mount::VERSION) => match MountProc(h.proc_) {
                MountProc::MNT => {
                    let Ok(MountArgs::Mnt(path)) =
                        MountArgs::decode(MountProc::MNT, &call[h.args_at..])
                    else {
                        return None;
                    };
                    if let Ok(MountRes::Mnt(Mountres3::Ok(ok))) =
                        MountRes::decode(MountProc::MNT, body)
                        && self.export_allowed(path)
                    {
                        self.record(ok.fhandle.0);
                    }
                    None
                }
                MountProc::EXPORT => {
                    let Ok(MountRes::Export(list)) = MountRes::decode(MountProc::EXPORT, body)
                    else {
                        return None;
                    };
                    let kept: Vec<_> = list
                        .iter()
                        .filter(|n| self.export_allowed(n.ex_dir))
                        .cloned()
                        .collect();
                    if kept.len() == list.len() {
                        return None;
                    }
                    let mut out = BytesMut::with_capacity(reply.len());
                    out.extend_from_slice(&reply[..results_at]);
                    MountRes::Export(kept).encode(&mut out);
                    Some(out)
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn record_nfs(&self, res: &Res<'_>) {
        match res {
            Res::Lookup(nfs3::NfsResult::Ok(ok)) => self.record(ok.object.0),
            Res::Create(nfs3::NfsResult::Ok(ok))
            | Res::Mkdir(nfs3::NfsResult::Ok(ok))
            | Res::Symlink(nfs3::NfsResult::Ok(ok))
            | Res::Mknod(nfs3::NfsResult::Ok(ok)) => {
                if let Some(fh) = &ok.obj {
                    self.record(fh.0);
                }
            }
            Res::Readdirplus(nfs3::NfsResult::Ok(ok)) => {
                for e in &ok.reply.entries {
                    if e.name == b".." {
                        continue;
                    }
                    if let Some(fh) = &e.name_handle {
                        self.record(fh.0);
                    }
                }
            }
            _ => {}
        }
    }

    pub(crate) fn record(&self, fh: &[u8]) {
        if let Err(e) = self.handles.insert(fh) {
            // The handle works for this run (it is in memory); after a restart the
            // client gets STALE and looks it up again. Worth a warning, not a failed call.
            warn!(side = "internal", error = %e, "issued handle not saved");
        }
    }
}

fn trim_slash(p: &[u8]) -> &[u8] {
    let mut end = p.len();
    while end > 1 && p[end - 1] == b'/' {
        end -= 1;
    }
    &p[..end]
}

/// Answers a MNT of a directory below an export (see `Admit::MountBelow`): MNT of the
/// export itself, then LOOKUP of each component with the client's (rewritten)
/// credential; every step must be a directory, so a symlink never leads out. Returns the
/// MNT reply for the client (its xid), recording the handles issued on the way.
pub async fn mount_below(
    policy: &Policy,
    mount_up: &crate::upstream::Upstream,
    nfs_up: &crate::upstream::Upstream,
    call: BytesMut,
    export: Vec<u8>,
    components: Vec<Vec<u8>>,
) -> BytesMut {
    let Ok(h) = CallHeader::parse(&call) else {
        return accepted_reply(0, AcceptStat::GARBAGE_ARGS);
    };
    let xid = h.xid;
    let fail = |st: Mountstat3| {
        let mut r = accepted_reply(xid, AcceptStat::SUCCESS);
        MountRes::Mnt(Mountres3::Fail(st)).encode(&mut r);
        r
    };
    // Header and credential of the client's call, for calls of our own.
    let head = &call[..h.args_at];
    let mut mnt = BytesMut::from(head);
    MountArgs::Mnt(&export).encode(&mut mnt);
    let Ok(reply) = mount_up.call(mnt).await else {
        return fail(Mountstat3::SERVERFAULT);
    };
    let (root, flavors) = match parse_reply(&reply) {
        Ok((_, ReplyKind::Accepted { stat, results_at })) if stat == AcceptStat::SUCCESS => {
            match MountRes::decode(MountProc::MNT, &reply[results_at..]) {
                Ok(MountRes::Mnt(Mountres3::Ok(ok))) => (ok.fhandle.0.to_vec(), ok.auth_flavors),
                Ok(MountRes::Mnt(Mountres3::Fail(st))) => return fail(st),
                _ => return fail(Mountstat3::SERVERFAULT),
            }
        }
        _ => return fail(Mountstat3::SERVERFAULT),
    };
    policy.record(&root);
    let mut fh = root;
    for name in &components {
        let mut look = BytesMut::from(head);
        // program NFS v3, procedure LOOKUP (header words 3..5).
        look[12..16].copy_from_slice(&nfs3::PROGRAM.to_be_bytes());
        look[16..20].copy_from_slice(&nfs3::VERSION.to_be_bytes());
        look[20..24].copy_from_slice(&Proc::LOOKUP.0.to_be_bytes());
        Args::Lookup(nfs3::LookupArgs {
            what: nfs3::Diropargs3 {
                dir: nfs3::Fh(&fh),
                name,
            },
        })
        .encode(&mut look);
        let Ok(reply) = nfs_up.call(look).await else {
            return fail(Mountstat3::SERVERFAULT);
        };
        let Ok((_, ReplyKind::Accepted { stat, results_at })) = parse_reply(&reply) else {
            return fail(Mountstat3::SERVERFAULT);
        };
        if stat != AcceptStat::SUCCESS {
            return fail(Mountstat3::SERVERFAULT);
        }
        match Res::decode(Proc::LOOKUP, &reply[results_at..]) {
            Ok(Res::Lookup(nfs3::NfsResult::Ok(ok))) => {
                let is_dir = ok
                    .obj_attributes
                    .as_ref()
                    .is_some_and(|a| a.ftype == nfs3::Ftype3::DIR);
                if !is_dir {
                    warn!(side = "client", path = %String::from_utf8_lossy(name),
                        "MNT below an export through something that is not a directory (a symlink?): refused");
                    return fail(Mountstat3::NOTDIR);
                }
                fh = ok.object.0.to_vec();
                policy.record(&fh);
            }
            Ok(Res::Lookup(nfs3::NfsResult::Fail(st, _))) => {
                return fail(match st {
                    Nfsstat3::NOENT => Mountstat3::NOENT,
                    Nfsstat3::ACCES | Nfsstat3::PERM => Mountstat3::ACCES,
                    Nfsstat3::NOTDIR => Mountstat3::NOTDIR,
                    _ => Mountstat3::SERVERFAULT,
                });
            }
            _ => return fail(Mountstat3::SERVERFAULT),
        }
    }
    let mut r = accepted_reply(xid, AcceptStat::SUCCESS);
    MountRes::Mnt(Mountres3::Ok(mount::Mountres3Ok {
        fhandle: nfs3::Fh(&fh),
        auth_flavors: flavors,
    }))
    .encode(&mut r);
    r
}

/// The NFS procedures whose replies hand out file handles (recorded by `observe`).
pub fn issues_handles(p: Proc) -> bool {
    matches!(
        p,
        Proc::LOOKUP | Proc::CREATE | Proc::MKDIR | Proc::SYMLINK | Proc::MKNOD | Proc::READDIRPLUS
    )
}

/// Every file handle a call names.
fn handles_in<'a>(a: &Args<'a>) -> Vec<&'a [u8]> {
    [a.fh(), a.fh2()]
        .into_iter()
        .flatten()
        .map(|f| f.0)
        .collect()
}

/// An NFS error reply for `p`: the status, then its resfail with every optional
/// attribute absent (post_op_attr / wcc_data as FALSE words).
pub fn nfs_error(xid: u32, p: Proc, status: Nfsstat3) -> BytesMut {
    let mut r = accepted_reply(xid, AcceptStat::SUCCESS);
    r.put_u32(status.0);
    let absent_words = match p {
        Proc::GETATTR => 0,
        Proc::LOOKUP
        | Proc::ACCESS
        | Proc::READLINK
        | Proc::READ
        | Proc::READDIR
        | Proc::READDIRPLUS
        | Proc::FSSTAT
        | Proc::FSINFO
        | Proc::PATHCONF => 1,
        Proc::LINK => 3,
        Proc::RENAME => 4,
        // SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, COMMIT: wcc_data.
        _ => 2,
    };
    for _ in 0..absent_words {
        r.put_u32(0);
    }
    r
}

/// Checks that `dir` can hold the handle store (for `check-config`-time messages).
pub fn state_dir_usable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests;
