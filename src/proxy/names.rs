//! The session's metadata (`[cache] metadata = "session"`): LOOKUP, GETATTR, ACCESS,
//! READLINK — a REMOVE of a name known to be absent, and a MKDIR, SYMLINK, MKNOD, LINK or
//! CREATE GUARDED of a name known to exist — answered from what earlier
//! replies and the session's own namespace changes taught, so a warm session does not
//! pay a WAN round trip for each (paper §3: one user session owns its files; the
//! middleware ends it with SIGUSR2, which forgets all of this with the cache).
//!
//! What is kept, all in memory and bounded (`MAX_ENTRIES` per table; a full table is
//! cleared):
//! - names: (directory, name) → the handle, or "absent" (a NOENT reply, a REMOVE);
//! - complete directories: made by this proxy's MKDIR, so every name in them is known
//!   (absent unless learnt) until something is not recorded exactly;
//! - symlink targets (SYMLINK calls, READLINK replies);
//! - ACCESS results per (object, caller's AUTH_SYS ids): asked bits and granted bits.
//!
//! Attributes are the cache's own (`CacheLayer`, with the local-write overlay).
//!
//! Races: every namespace change (CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME,
//! LINK) ticks the cache's change clock for the names it changes (and their directories)
//! before it is forwarded, and again when its reply is seen. A reply teaches a name only
//! if that name has not changed since the call's stamp (the tick of its own start, for a
//! namespace change), so a LOOKUP answered before a REMOVE, or two changes of one name
//! in flight, never leave a stale entry: the name is forgotten instead and the next call
//! asks. Changes of *different* names of one directory in flight together (a parallel
//! build creating files side by side) each teach their own name. A READDIRPLUS reply
//! teaches its names only if nothing in the directory changed since its stamp.
//!
//! Not answered here: "." and "..", a LOOKUP whose object's attributes are unknown, an
//! ACCESS asking bits not asked before. Changes made behind the proxy (by other clients
//! of the server) are not seen, as for data in `consistency = "session"`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;

use crate::nfs3::{self, Args, Fattr3, Fh, NfsResult, Nfsstat3, Proc, Res, WccData};
use crate::rpc::msg::accepted_reply;
use crate::rpc::{AcceptStat, CallHeader};
use crate::xdr::Reader;

/// Entries kept at most per table (names, directories, links, access); a table that
/// would grow past it is cleared (with every directory's completeness). The per-name
/// change clock (one entry per name changed, most of which the names table learns too)
/// counts as one of these tables.
const MAX_ENTRIES: usize = 1 << 17;

#[derive(Default)]
struct Dir {
    /// Clock value of the directory's last namespace change.
    changed_at: u64,
    /// Every name in the directory is in `names` (present) or absent.
    complete: bool,
    /// Removed (an RMDIR of a name that named it): nothing about it is answered or
    /// learnt any more; the server says ESTALE for it.
    removed: bool,
}

/// (directory handle, name) → the handle it names, or None for "absent".
type NameMap = HashMap<(Vec<u8>, Vec<u8>), Option<Vec<u8>>>;

/// What a name was known to be: None unknown, Some(None) absent, Some(Some(handle)).
type Was = Option<Option<Vec<u8>>>;

/// Symlink targets kept at most (each up to 4 KiB).
const MAX_LINKS: usize = 8192;

#[derive(Default)]
struct Inner {
    names: NameMap,
    dirs: HashMap<Vec<u8>, Dir>,
    links: HashMap<Vec<u8>, Vec<u8>>,
    access: HashMap<(Vec<u8>, Vec<u8>), (u32, u32)>,
    /// Names a namespace change in flight works on, with what they named before it
    /// (a RENAME's reply needs the handle it moved; a REMOVE's, the object removed).
    pending: HashMap<(Vec<u8>, Vec<u8>), Was>,
    /// (directory, name) → clock value of the last namespace change of that name. A
    /// reply teaches a name only if *it* has not changed since the call's stamp: changes
    /// of other names of the directory in flight at the same time (`make -j` creating
    /// files side by side) do not make it unknown.
    name_changed: HashMap<(Vec<u8>, Vec<u8>), u64>,
    /// The change clock when the tables were last cleared: every directory counts as
    /// changed then (what `dirs` knew of later changes is gone).
    floor: u64,
    /// The change clock as read when the lock was last taken to change the tables.
    hint: u64,
}

impl Inner {
    fn clear(&mut self) {
        let floor = self.hint.max(self.floor);
        *self = Inner::default();
        self.floor = floor;
        self.hint = floor;
    }

    /// Clock value of the last namespace change of `dir` (or of a change of the
    /// attributes an ACCESS depends on, for other objects).
    fn changed_at(&self, dir: &[u8]) -> u64 {
        match self.dirs.get(dir) {
            Some(d) if d.removed => u64::MAX,
            d => d.map_or(0, |d| d.changed_at).max(self.floor),
        }
    }

    fn removed(&self, dir: &[u8]) -> bool {
        self.dirs.get(dir).is_some_and(|d| d.removed)
    }

    /// Clock value of the last namespace change of `name` in `dir`.
    fn name_changed_at(&self, dir: &[u8], name: &[u8]) -> u64 {
        if self.removed(dir) {
            return u64::MAX;
        }
        self.name_changed
            .get(&(dir.to_vec(), name.to_vec()))
            .map_or(0, |t| *t)
            .max(self.floor)
    }

    /// `name` in `dir` (and so the directory's entries) changes at clock value `t`.
    fn name_changes(&mut self, dir: &[u8], name: &[u8], t: u64) {
        let key = (dir.to_vec(), name.to_vec());
        if self.name_changed.len() >= MAX_ENTRIES && !self.name_changed.contains_key(&key) {
            self.clear();
        }
        self.name_changed.insert(key, t);
        self.dir_mut(dir).changed_at = t;
    }

    fn set_name(&mut self, dir: &[u8], name: &[u8], fh: Option<Vec<u8>>) {
        if self.names.len() >= MAX_ENTRIES {
            self.clear();
        }
        self.names.insert((dir.to_vec(), name.to_vec()), fh);
    }

    /// A name whose outcome is not known: forgotten, and its directory is no longer
    /// complete.
    fn unknown(&mut self, dir: &[u8], name: &[u8]) {
        self.names.remove(&(dir.to_vec(), name.to_vec()));
        if let Some(d) = self.dirs.get_mut(dir) {
            d.complete = false;
        }
    }

    fn dir_mut(&mut self, dir: &[u8]) -> &mut Dir {
        if self.dirs.len() >= MAX_ENTRIES && !self.dirs.contains_key(dir) {
            self.clear();
        }
        self.dirs.entry(dir.to_vec()).or_default()
    }

    /// `dir` is gone (removed, or replaced by a RENAME onto its name): nothing of it is
    /// answered or learnt any more.
    fn mark_removed(&mut self, dir: &[u8]) {
        let d = self.dir_mut(dir);
        (d.complete, d.removed) = (false, true);
    }

    /// What LOOKUP(dir, name) would say: Some(Some(fh)), Some(None) for absent, None
    /// when unknown.
    fn lookup(&self, dir: &[u8], name: &[u8]) -> Option<Option<&Vec<u8>>> {
        let d = self.dirs.get(dir);
        let key = (dir.to_vec(), name.to_vec());
        if self.pending.contains_key(&key) || d.is_some_and(|d| d.removed) {
            return None;
        }
        if let Some(e) = self.names.get(&key) {
            return Some(e.as_ref());
        }
        d.is_some_and(|d| d.complete).then_some(None)
    }
}

/// The session metadata cache. `hits` counts calls answered here.
#[derive(Default)]
pub struct Names {
    inner: Mutex<Inner>,
    pub hits: AtomicU64,
}

/// Who is asking, for ACCESS: the AUTH_SYS uid, gid and groups (stamp and machine name
/// left out), or the flavor and body of any other credential.
fn who(h: &CallHeader<'_>) -> Vec<u8> {
    let mut k = h.cred.flavor.0.to_be_bytes().to_vec();
    let body = h.cred.body;
    if h.cred.flavor.0 == 1 {
        let mut r = Reader::new(body);
        if r.u32().is_ok() && r.opaque(255).is_ok() {
            k.extend_from_slice(&body[r.pos()..]);
            return k;
        }
    }
    k.extend_from_slice(body);
    k
}

/// The attributes the cache holds for a handle (memory only, with local writes).
pub trait Attrs {
    fn attr(&self, fh: &[u8]) -> Option<Fattr3>;
    /// A namespace change ticks the change clock; returns the new value.
    fn tick(&self) -> u64;
    /// The change clock's value now (stamps of calls in flight are at most this).
    fn now(&self) -> u64;
    /// A directory's entries change: replies stamped before now teach nothing about its
    /// attributes (its mtime, size, link count); what is known stays.
    fn touch(&self, fh: &[u8]);
    /// Forgets the attributes of an object a namespace change touched (its link count
    /// or ctime changed).
    fn forget(&self, fh: &[u8]);
}

/// The attributes to answer with: not those of a regular file with more than one link
/// (a REMOVE of another of its names, through the proxy or not, changes its link count
/// without the proxy knowing which file it was): those are asked for again.
fn shared_attr(attrs: &dyn Attrs, fh: &[u8]) -> Option<Fattr3> {
    let a = attrs.attr(fh)?;
    (a.ftype != nfs3::Ftype3::REG || a.nlink <= 1).then_some(a)
}

fn reply(xid: u32, res: &Res<'_>) -> BytesMut {
    let mut out = accepted_reply(xid, AcceptStat::SUCCESS);
    res.encode(&mut out);
    out
}

/// The header and arguments of an NFSv3 call record to `p`.
fn decode(p: Proc, call: &[u8]) -> Option<(CallHeader<'_>, Args<'_>)> {
    let h = CallHeader::parse(call).ok()?;
    let args = Args::decode(p, &call[h.args_at..]).ok()?;
    Some((h, args))
}

/// The directories a namespace change works on, with the names it changes.
fn changes<'a>(args: &Args<'a>) -> Vec<(&'a [u8], &'a [u8])> {
    match args {
        Args::Create(a) => vec![(a.where_.dir.0, a.where_.name)],
        Args::Mkdir(a) => vec![(a.where_.dir.0, a.where_.name)],
        Args::Symlink(a) => vec![(a.where_.dir.0, a.where_.name)],
        Args::Mknod(a) => vec![(a.where_.dir.0, a.where_.name)],
        Args::Remove(a) => vec![(a.object.dir.0, a.object.name)],
        Args::Rmdir(a) => vec![(a.object.dir.0, a.object.name)],
        Args::Rename(a) => vec![(a.from.dir.0, a.from.name), (a.to.dir.0, a.to.name)],
        Args::Link(a) => vec![(a.link.dir.0, a.link.name)],
        _ => Vec::new(),
    }
}

impl Names {
    /// Whether a reply to `p` can teach the session anything (`observe` does nothing
    /// for the others: READ, WRITE, COMMIT, ...).
    pub fn learns_from(p: Proc) -> bool {
        p.changes_namespace()
            || matches!(
                p,
                Proc::SETATTR | Proc::LOOKUP | Proc::ACCESS | Proc::READLINK | Proc::READDIRPLUS
            )
    }

    /// Forgets everything (SIGUSR2, with the cache); `now` is the change clock's value
    /// after the drop ticked it: replies to calls stamped before teach nothing.
    pub fn drop_all(&self, now: u64) {
        let mut g = self.inner.lock().expect("names lock");
        g.hint = g.hint.max(now);
        g.clear();
    }

    /// The handle `name` in `dir` is known to name now (not while a change of it is in
    /// flight), or None.
    pub fn known(&self, dir: &[u8], name: &[u8]) -> Option<Vec<u8>> {
        if name == b"." || name == b".." {
            return None;
        }
        self.inner
            .lock()
            .expect("names lock")
            .lookup(dir, name)?
            .cloned()
    }

    /// The reply to a metadata call if this session knows it; None: forward it.
    pub fn answer(&self, p: Proc, call: &[u8], attrs: &dyn Attrs) -> Option<BytesMut> {
        if !matches!(
            p,
            Proc::GETATTR
                | Proc::LOOKUP
                | Proc::ACCESS
                | Proc::READLINK
                | Proc::REMOVE
                | Proc::MKDIR
                | Proc::SYMLINK
                | Proc::MKNOD
                | Proc::LINK
                | Proc::CREATE
        ) {
            return None;
        }
        let (h, args) = decode(p, call)?;
        let xid = h.xid;
        // A name that must not exist yet for the call to make it: NFS3ERR_EXIST when it is
        // known to exist (nothing changes, nothing to write back).
        let exists = |dir: &[u8], name: &[u8]| {
            name != b"."
                && name != b".."
                && matches!(
                    self.inner.lock().expect("names lock").lookup(dir, name),
                    Some(Some(_))
                )
        };
        let exist_fail = |dir: &[u8]| nfs3::CreateResFail {
            dir_wcc: WccData {
                before: None,
                after: attrs.attr(dir),
            },
        };
        let out = match args {
            Args::Mkdir(a) if exists(a.where_.dir.0, a.where_.name) => reply(
                xid,
                &Res::Mkdir(NfsResult::Fail(Nfsstat3::EXIST, exist_fail(a.where_.dir.0))),
            ),
            Args::Symlink(a) if exists(a.where_.dir.0, a.where_.name) => reply(
                xid,
                &Res::Symlink(NfsResult::Fail(Nfsstat3::EXIST, exist_fail(a.where_.dir.0))),
            ),
            Args::Mknod(a) if exists(a.where_.dir.0, a.where_.name) => reply(
                xid,
                &Res::Mknod(NfsResult::Fail(Nfsstat3::EXIST, exist_fail(a.where_.dir.0))),
            ),
            // GUARDED only: UNCHECKED succeeds on an existing file, and EXCLUSIVE does
            // when its verifier matches (a retransmission).
            Args::Create(a)
                if matches!(a.how, nfs3::CreateHow3::Guarded(_))
                    && exists(a.where_.dir.0, a.where_.name) =>
            {
                reply(
                    xid,
                    &Res::Create(NfsResult::Fail(Nfsstat3::EXIST, exist_fail(a.where_.dir.0))),
                )
            }
            Args::Link(a) if exists(a.link.dir.0, a.link.name) => reply(
                xid,
                &Res::Link(NfsResult::Fail(
                    Nfsstat3::EXIST,
                    nfs3::LinkResFail {
                        file_attributes: attrs.attr(a.file.0),
                        linkdir_wcc: exist_fail(a.link.dir.0).dir_wcc,
                    },
                )),
            ),
            Args::Getattr(a) => {
                let attr = shared_attr(attrs, a.object.0)?;
                reply(
                    xid,
                    &Res::Getattr(NfsResult::Ok(nfs3::GetattrResOk {
                        obj_attributes: attr,
                    })),
                )
            }
            Args::Lookup(a) => {
                let (dir, name) = (a.what.dir.0, a.what.name);
                if name == b"." || name == b".." {
                    return None;
                }
                let found = self
                    .inner
                    .lock()
                    .expect("names lock")
                    .lookup(dir, name)?
                    .cloned();
                let dir_attributes = attrs.attr(dir);
                match found {
                    Some(fh) => {
                        let obj = shared_attr(attrs, &fh)?;
                        reply(
                            xid,
                            &Res::Lookup(NfsResult::Ok(nfs3::LookupResOk {
                                object: Fh(&fh),
                                obj_attributes: Some(obj),
                                dir_attributes,
                            })),
                        )
                    }
                    None => reply(
                        xid,
                        &Res::Lookup(NfsResult::Fail(
                            Nfsstat3::NOENT,
                            nfs3::LookupResFail { dir_attributes },
                        )),
                    ),
                }
            }
            Args::Remove(a) => {
                // Only a name known to be absent (nothing changes, nothing to write back).
                let g = self.inner.lock().expect("names lock");
                if g.lookup(a.object.dir.0, a.object.name)?.is_some() {
                    return None;
                }
                drop(g);
                reply(
                    xid,
                    &Res::Remove(NfsResult::Fail(
                        Nfsstat3::NOENT,
                        nfs3::RemoveResFail {
                            dir_wcc: WccData {
                                before: None,
                                after: attrs.attr(a.object.dir.0),
                            },
                        },
                    )),
                )
            }
            Args::Access(a) => {
                let key = (a.object.0.to_vec(), who(&h));
                let (asked, granted) = *self.inner.lock().expect("names lock").access.get(&key)?;
                if a.access & !asked != 0 {
                    return None;
                }
                reply(
                    xid,
                    &Res::Access(NfsResult::Ok(nfs3::AccessResOk {
                        obj_attributes: attrs.attr(a.object.0),
                        access: granted & a.access,
                    })),
                )
            }
            Args::Readlink(a) => {
                let target = self
                    .inner
                    .lock()
                    .expect("names lock")
                    .links
                    .get(a.symlink.0)?
                    .clone();
                reply(
                    xid,
                    &Res::Readlink(NfsResult::Ok(nfs3::ReadlinkResOk {
                        symlink_attributes: attrs.attr(a.symlink.0),
                        data: &target,
                    })),
                )
            }
            _ => return None,
        };
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// Before a call is forwarded: a namespace change ticks the clock for its
    /// directories and forgets the names it changes (so nothing answers them while it is
    /// in flight); a SETATTR forgets the object's ACCESS results.
    pub fn before(&self, p: Proc, call: &[u8], attrs: &dyn Attrs) {
        if p != Proc::SETATTR && !p.changes_namespace() {
            return;
        }
        let Some((_, args)) = decode(p, call) else {
            return;
        };
        let t = attrs.tick();
        let mut g = self.inner.lock().expect("names lock");
        g.hint = g.hint.max(t);
        if let Args::Setattr(a) = &args {
            // Its mode or owner may change: ACCESS replies stamped before teach nothing.
            let fh = a.object.0;
            g.dir_mut(fh).changed_at = t;
            g.access.retain(|(o, _), _| o != fh);
            return;
        }
        let dirs: Vec<&[u8]> = changes(&args).iter().map(|(d, _)| *d).collect();
        for (dir, name) in changes(&args) {
            g.name_changes(dir, name, t);
            // The name's outcome is learnt from the reply; until then it is unknown,
            // but the directory stays complete (the reply settles the name either way,
            // or makes the directory incomplete).
            let was = g.lookup(dir, name).map(|o| o.cloned());
            let key = (dir.to_vec(), name.to_vec());
            g.names.remove(&key);
            if g.pending.len() >= MAX_ENTRIES {
                g.clear();
            }
            // A change of the name already in flight knew what it named (this one finds
            // the name unknown): that stays, so the first reply forgets the object.
            g.pending.entry(key).or_insert(was);
        }
        drop(g);
        for d in dirs {
            attrs.touch(d);
        }
    }

    /// Learns from a forwarded call's reply (`stamp` taken when it was forwarded, after
    /// `before`). Call before the cache's own `observe`.
    pub fn observe(&self, p: Proc, call: &[u8], reply_body: &[u8], stamp: u64, attrs: &dyn Attrs) {
        if !Names::learns_from(p) {
            return;
        }
        let Some((h, args)) = decode(p, call) else {
            return;
        };
        let res = Res::decode(p, reply_body).ok();
        if let Args::Setattr(a) = &args {
            // Done: ACCESS replies forwarded while it ran may hold the old grants.
            let t = attrs.tick();
            let mut g = self.inner.lock().expect("names lock");
            g.hint = g.hint.max(t);
            g.dir_mut(a.object.0).changed_at = t;
            g.access.retain(|(o, _), _| o != a.object.0);
            return;
        }
        let mut g = self.inner.lock().expect("names lock");
        g.hint = g.hint.max(attrs.now());
        let namespace = changes(&args);
        if !namespace.is_empty() {
            let was: Vec<Was> = namespace
                .iter()
                .map(|(d, n)| g.pending.remove(&(d.to_vec(), n.to_vec())).flatten())
                .collect();
            // Learnt only if nothing else changed these names since this call started;
            // else they stay unknown. Other names of the directories may have changed.
            let alone = namespace
                .iter()
                .all(|(d, n)| g.name_changed_at(d, n) <= stamp);
            // Whatever the names named before may have lost a link or changed its
            // ctime (a CREATE of an existing file truncates it).
            let mut forget: Vec<Vec<u8>> = was.iter().flatten().flatten().cloned().collect();
            if alone && let Some(res) = &res {
                learn_change(&mut g, &args, res, &was, stamp, &mut forget);
            } else {
                for (d, n) in &namespace {
                    g.unknown(d, n);
                }
            }
            let t = attrs.tick();
            g.hint = g.hint.max(t);
            for (d, n) in &namespace {
                g.name_changes(d, n, t);
            }
            drop(g);
            for (d, _) in &namespace {
                attrs.touch(d);
            }
            for fh in forget {
                attrs.forget(&fh);
            }
            return;
        }
        let Some(res) = res else { return };
        match (&args, &res) {
            (Args::Lookup(a), Res::Lookup(r))
                if g.name_changed_at(a.what.dir.0, a.what.name) <= stamp =>
            {
                let (dir, name) = (a.what.dir.0, a.what.name);
                if name == b"." || name == b".." {
                    return;
                }
                match r {
                    NfsResult::Ok(ok) => g.set_name(dir, name, Some(ok.object.0.to_vec())),
                    NfsResult::Fail(Nfsstat3::NOENT, _) => g.set_name(dir, name, None),
                    NfsResult::Fail(..) => {}
                }
            }
            (Args::Access(a), Res::Access(NfsResult::Ok(ok)))
                if g.changed_at(a.object.0) <= stamp =>
            {
                if g.access.len() >= MAX_ENTRIES {
                    g.access.clear();
                }
                g.access
                    .insert((a.object.0.to_vec(), who(&h)), (a.access, ok.access));
            }
            (Args::Readlink(a), Res::Readlink(NfsResult::Ok(ok))) => {
                if g.links.len() >= MAX_LINKS {
                    g.links.clear();
                }
                g.links.insert(a.symlink.0.to_vec(), ok.data.to_vec());
            }
            (Args::Readdirplus(a), Res::Readdirplus(NfsResult::Ok(ok)))
                if g.changed_at(a.dir.0) <= stamp =>
            {
                for e in &ok.reply.entries {
                    if e.name == b"." || e.name == b".." {
                        continue;
                    }
                    if let Some(fh) = e.name_handle {
                        g.set_name(a.dir.0, e.name, Some(fh.0.to_vec()));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Records what a namespace change's reply says (no other change of its names ran
/// meanwhile). `forget` collects objects whose attributes changed.
/// `was`: what each name of `changes(args)` was known to be before the call; `stamp`:
/// the call's.
fn learn_change(
    g: &mut Inner,
    args: &Args<'_>,
    res: &Res<'_>,
    was: &[Was],
    stamp: u64,
    forget: &mut Vec<Vec<u8>>,
) {
    let made = |g: &mut Inner,
                dir: &[u8],
                name: &[u8],
                r: &NfsResult<nfs3::CreateResOk<'_>, nfs3::CreateResFail>| match r {
        NfsResult::Ok(ok) => match ok.obj {
            Some(fh) => {
                g.set_name(dir, name, Some(fh.0.to_vec()));
                Some(fh.0.to_vec())
            }
            None => {
                g.unknown(dir, name);
                None
            }
        },
        // EEXIST and the like: the name exists, its handle is unknown.
        NfsResult::Fail(..) => {
            g.unknown(dir, name);
            None
        }
    };
    match (args, res) {
        (Args::Create(a), Res::Create(r)) => {
            made(g, a.where_.dir.0, a.where_.name, r);
        }
        (Args::Mknod(a), Res::Mknod(r)) => {
            made(g, a.where_.dir.0, a.where_.name, r);
        }
        (Args::Mkdir(a), Res::Mkdir(r)) => {
            // A new directory is empty: every name in it is known — unless a change in
            // it was already under way when this reply was seen (a client that learnt
            // the handle from a LOOKUP may have created a name in it meanwhile, whose
            // outcome may be unknown): then it is not complete.
            if let Some(fh) = made(g, a.where_.dir.0, a.where_.name, r) {
                if g.removed(&fh) {
                    // The server gave a removed directory's handle to a new one: the
                    // old one's names go (its change clocks stay: they only make
                    // learning more careful).
                    g.names.retain(|(d, _), _| *d != fh);
                    g.dir_mut(&fh).removed = false;
                }
                if g.changed_at(&fh) <= stamp {
                    g.dir_mut(&fh).complete = true;
                }
            }
        }
        (Args::Symlink(a), Res::Symlink(r)) => {
            if let Some(fh) = made(g, a.where_.dir.0, a.where_.name, r) {
                if g.links.len() >= MAX_LINKS {
                    g.links.clear();
                }
                g.links.insert(fh, a.symlink.symlink_data.to_vec());
            }
        }
        (Args::Remove(_), Res::Remove(r)) | (Args::Rmdir(_), Res::Rmdir(r)) => {
            let (dir, name) = changes(args)[0];
            match r {
                NfsResult::Ok(_) | NfsResult::Fail(Nfsstat3::NOENT, _) => {
                    g.set_name(dir, name, None);
                    // A removed directory knows no names any more, and learns none
                    // from replies still on their way (a READDIRPLUS or LOOKUP of it
                    // answered before it went).
                    if let (Args::Rmdir(_), Some(Some(gone))) = (args, &was[0]) {
                        g.mark_removed(gone);
                    }
                }
                NfsResult::Fail(..) => g.unknown(dir, name),
            }
        }
        (Args::Rename(a), Res::Rename(r)) => {
            let (from, to) = (&a.from, &a.to);
            match (r, &was[0], &was[1]) {
                // Both names are links of one file: rename(2) does nothing.
                (NfsResult::Ok(_), Some(Some(m)), Some(Some(t))) if m == t => {
                    g.set_name(from.dir.0, from.name, Some(m.clone()));
                    g.set_name(to.dir.0, to.name, Some(m.clone()));
                }
                // The target was absent or another object: a move. An object it named
                // is gone from there; if it was a directory (an empty one, replaced),
                // it is gone altogether: nothing of it is answered any more.
                (NfsResult::Ok(_), Some(Some(m)), Some(t)) => {
                    if let Some(t) = t {
                        g.mark_removed(t);
                    }
                    g.set_name(from.dir.0, from.name, None);
                    g.set_name(to.dir.0, to.name, Some(m.clone()));
                }
                // The target unknown (it may have been a link of the same file): the
                // new name is the file's; whether the old one went is unknown.
                (NfsResult::Ok(_), Some(Some(m)), None) => {
                    g.unknown(from.dir.0, from.name);
                    g.set_name(to.dir.0, to.name, Some(m.clone()));
                }
                _ => {
                    g.unknown(from.dir.0, from.name);
                    g.unknown(to.dir.0, to.name);
                }
            }
        }
        (Args::Link(a), Res::Link(r)) => match r {
            NfsResult::Ok(_) => {
                g.set_name(a.link.dir.0, a.link.name, Some(a.file.0.to_vec()));
                forget.push(a.file.0.to_vec()); // its link count changed
            }
            NfsResult::Fail(..) => g.unknown(a.link.dir.0, a.link.name),
        },
        _ => {
            for (d, n) in changes(args) {
                g.unknown(d, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use bytes::BytesMut;

    use super::*;
    use crate::nfs3::samples::attr;
    use crate::rpc::msg::call_message;
    use crate::rpc::{ReplyKind, parse_reply};

    /// The cache's attribute table and clock, in memory.
    #[derive(Default)]
    struct Table {
        clock: Cell<u64>,
        attrs: std::cell::RefCell<HashMap<Vec<u8>, Fattr3>>,
    }

    impl Attrs for Table {
        fn attr(&self, fh: &[u8]) -> Option<Fattr3> {
            self.attrs.borrow().get(fh).cloned()
        }
        fn tick(&self) -> u64 {
            self.clock.set(self.clock.get() + 1);
            self.clock.get()
        }
        fn now(&self) -> u64 {
            self.clock.get()
        }
        fn touch(&self, _: &[u8]) {
            self.tick();
        }
        fn forget(&self, fh: &[u8]) {
            self.attrs.borrow_mut().remove(fh);
        }
    }

    impl Table {
        fn stamp(&self) -> u64 {
            self.clock.get()
        }
        fn knows(&self, fh: &[u8]) {
            let mut a = attr(1);
            a.nlink = 1;
            self.attrs.borrow_mut().insert(fh.to_vec(), a);
        }
    }

    fn call(p: Proc, a: &Args<'_>) -> BytesMut {
        let mut b = BytesMut::new();
        a.encode(&mut b);
        call_message(1, nfs3::PROGRAM, 3, p.0, &b)
    }

    fn body(res: &Res<'_>) -> Vec<u8> {
        let mut b = BytesMut::new();
        res.encode(&mut b);
        b.to_vec()
    }

    fn d(dir: &[u8], name: &'static str) -> nfs3::Diropargs3<'static> {
        nfs3::Diropargs3 {
            dir: Fh(Box::leak(dir.to_vec().into_boxed_slice())),
            name: name.as_bytes(),
        }
    }

    fn lookup_call(dir: &[u8], name: &'static str) -> BytesMut {
        call(
            Proc::LOOKUP,
            &Args::Lookup(nfs3::LookupArgs { what: d(dir, name) }),
        )
    }

    fn remove_call(dir: &[u8], name: &'static str) -> BytesMut {
        call(
            Proc::REMOVE,
            &Args::Remove(nfs3::RemoveArgs {
                object: d(dir, name),
            }),
        )
    }

    /// A namespace change made through the proxy with nothing else in flight: `before`,
    /// then its reply.
    fn through(n: &Names, t: &Table, p: Proc, call: &[u8], reply: &[u8]) {
        n.before(p, call, t);
        let s = t.stamp();
        n.observe(p, call, reply, s, t);
    }

    fn mkdir_call(dir: &[u8], name: &'static str) -> BytesMut {
        call(
            Proc::MKDIR,
            &Args::Mkdir(nfs3::MkdirArgs {
                where_: d(dir, name),
                attributes: nfs3::Sattr3::default(),
            }),
        )
    }

    fn create_call(dir: &[u8], name: &'static str) -> BytesMut {
        call(
            Proc::CREATE,
            &Args::Create(nfs3::CreateArgs {
                where_: d(dir, name),
                how: nfs3::CreateHow3::Unchecked(nfs3::Sattr3::default()),
            }),
        )
    }

    /// The reply of a CREATE or MKDIR (`p`) that made `fh`.
    fn made_reply(p: Proc, fh: &[u8]) -> Vec<u8> {
        let ok = nfs3::CreateResOk {
            obj: Some(Fh(fh)),
            obj_attributes: None,
            dir_wcc: WccData::default(),
        };
        body(&match p {
            Proc::MKDIR => Res::Mkdir(NfsResult::Ok(ok)),
            _ => Res::Create(NfsResult::Ok(ok)),
        })
    }

    fn lookup_ok(fh: &[u8]) -> Vec<u8> {
        body(&Res::Lookup(NfsResult::Ok(nfs3::LookupResOk {
            object: Fh(fh),
            obj_attributes: None,
            dir_attributes: None,
        })))
    }

    fn remove_ok() -> Vec<u8> {
        body(&Res::Remove(NfsResult::Ok(nfs3::RemoveResOk {
            dir_wcc: WccData::default(),
        })))
    }

    /// The LOOKUP's answer: Some(Ok(handle)), Some(Err(status)), None (forwarded).
    fn answer(
        n: &Names,
        t: &Table,
        dir: &[u8],
        name: &'static str,
    ) -> Option<Result<Vec<u8>, Nfsstat3>> {
        let r = n.answer(Proc::LOOKUP, &lookup_call(dir, name), t)?;
        let Ok((_, ReplyKind::Accepted { results_at, .. })) = parse_reply(&r) else {
            panic!("not a reply")
        };
        Some(match Res::decode(Proc::LOOKUP, &r[results_at..]).unwrap() {
            Res::Lookup(NfsResult::Ok(ok)) => Ok(ok.object.0.to_vec()),
            Res::Lookup(NfsResult::Fail(st, _)) => Err(st),
            _ => unreachable!(),
        })
    }

    const DIR: &[u8] = b"dir-handle";
    const FILE: &[u8] = b"file-handle";

    #[test]
    fn lookup_reply_seen_after_a_remove_teaches_nothing() {
        let (n, t) = (Names::default(), Table::default());
        t.knows(FILE);
        // LOOKUP forwarded, then REMOVE forwarded and answered; the LOOKUP's reply (from
        // before the REMOVE at the server) arrives last.
        let lookup_stamp = t.stamp();
        let rm = remove_call(DIR, "x");
        through(&n, &t, Proc::REMOVE, &rm, &remove_ok());
        assert_eq!(answer(&n, &t, DIR, "x"), Some(Err(Nfsstat3::NOENT)));
        n.observe(
            Proc::LOOKUP,
            &lookup_call(DIR, "x"),
            &lookup_ok(FILE),
            lookup_stamp,
            &t,
        );
        assert_eq!(
            answer(&n, &t, DIR, "x"),
            Some(Err(Nfsstat3::NOENT)),
            "a LOOKUP stamped before the REMOVE must not bring the name back"
        );
    }

    #[test]
    fn changes_of_other_names_in_flight_do_not_make_a_name_unknown() {
        // A parallel build: CREATEs of two names of one directory in flight together,
        // and a LOOKUP of a third forwarded meanwhile. Each reply teaches its own name,
        // in both orders, and the new directory they are in stays complete.
        let (n, t) = (Names::default(), Table::default());
        const OTHER: &[u8] = b"other-handle";
        const THIRD: &[u8] = b"third-handle";
        for fh in [FILE, OTHER, THIRD] {
            t.knows(fh);
        }
        let mkdir = mkdir_call(b"parent", "new");
        for x_first in [true, false] {
            n.drop_all(t.tick());
            through(&n, &t, Proc::MKDIR, &mkdir, &made_reply(Proc::MKDIR, DIR));
            let (cx, cy) = (create_call(DIR, "x"), create_call(DIR, "y"));
            n.before(Proc::CREATE, &cx, &t);
            let s_x = t.stamp();
            n.before(Proc::CREATE, &cy, &t);
            let s_y = t.stamp();
            let lz = lookup_call(DIR, "z");
            let s_z = t.stamp();
            let (rx, ry) = (
                made_reply(Proc::CREATE, FILE),
                made_reply(Proc::CREATE, OTHER),
            );
            if x_first {
                n.observe(Proc::CREATE, &cx, &rx, s_x, &t);
                n.observe(Proc::CREATE, &cy, &ry, s_y, &t);
            } else {
                n.observe(Proc::CREATE, &cy, &ry, s_y, &t);
                n.observe(Proc::CREATE, &cx, &rx, s_x, &t);
            }
            n.observe(Proc::LOOKUP, &lz, &lookup_ok(THIRD), s_z, &t);
            assert_eq!(answer(&n, &t, DIR, "x"), Some(Ok(FILE.to_vec())));
            assert_eq!(answer(&n, &t, DIR, "y"), Some(Ok(OTHER.to_vec())));
            assert_eq!(answer(&n, &t, DIR, "z"), Some(Ok(THIRD.to_vec())));
            assert_eq!(
                answer(&n, &t, DIR, "w"),
                Some(Err(Nfsstat3::NOENT)),
                "x_first={x_first}: the directory stays complete"
            );
        }
    }

    #[test]
    fn a_directory_changed_before_its_mkdir_reply_is_seen_is_not_complete() {
        // MKDIR forwarded; the server makes D, and a client that found D by a LOOKUP
        // creates x in it, whose reply says only that x exists (EXIST, no handle) — all
        // before the MKDIR's own reply is seen here. D must not then count as
        // complete: x exists, NOENT would be wrong.
        let (n, t) = (Names::default(), Table::default());
        t.knows(FILE);
        t.knows(DIR);
        let mkdir = mkdir_call(b"parent", "new");
        n.before(Proc::MKDIR, &mkdir, &t);
        let s_mk = t.stamp();
        let cx = create_call(DIR, "x");
        n.before(Proc::CREATE, &cx, &t);
        let s_x = t.stamp();
        let exist = body(&Res::Create(NfsResult::Fail(
            Nfsstat3::EXIST,
            nfs3::CreateResFail {
                dir_wcc: WccData::default(),
            },
        )));
        n.observe(Proc::CREATE, &cx, &exist, s_x, &t);
        n.observe(Proc::MKDIR, &mkdir, &made_reply(Proc::MKDIR, DIR), s_mk, &t);
        assert_eq!(answer(&n, &t, DIR, "x"), None, "x exists: asked upstream");
        assert_eq!(answer(&n, &t, DIR, "y"), None, "not complete");
        assert_eq!(
            answer(&n, &t, b"parent", "new"),
            Some(Ok(DIR.to_vec())),
            "the new name itself is learnt"
        );
    }

    #[test]
    fn a_removed_directory_answers_and_learns_nothing() {
        // A READDIRPLUS and a LOOKUP of D answered before D was removed, their replies
        // seen after the RMDIR's: nothing of D is taught, and D's names known before
        // are no longer answered (the server says ESTALE for D now).
        let (n, t) = (Names::default(), Table::default());
        t.knows(FILE);
        t.knows(DIR);
        let mk = mkdir_call(b"parent", "d");
        through(&n, &t, Proc::MKDIR, &mk, &made_reply(Proc::MKDIR, DIR));
        let cx = create_call(DIR, "x");
        through(&n, &t, Proc::CREATE, &cx, &made_reply(Proc::CREATE, FILE));
        assert_eq!(answer(&n, &t, DIR, "x"), Some(Ok(FILE.to_vec())));
        let early = t.stamp();
        let rm = call(
            Proc::RMDIR,
            &Args::Rmdir(nfs3::RmdirArgs {
                object: d(b"parent", "d"),
            }),
        );
        let gone = body(&Res::Rmdir(NfsResult::Ok(nfs3::RemoveResOk {
            dir_wcc: WccData::default(),
        })));
        through(&n, &t, Proc::RMDIR, &rm, &gone);
        n.observe(
            Proc::LOOKUP,
            &lookup_call(DIR, "y"),
            &lookup_ok(FILE),
            early,
            &t,
        );
        for name in ["x", "y", "z"] {
            assert_eq!(answer(&n, &t, DIR, name), None, "{name}: asked upstream");
        }
        assert_eq!(answer(&n, &t, b"parent", "d"), Some(Err(Nfsstat3::NOENT)));
        // A new directory given the same handle starts afresh.
        let mk = mkdir_call(b"parent", "e");
        through(&n, &t, Proc::MKDIR, &mk, &made_reply(Proc::MKDIR, DIR));
        assert_eq!(answer(&n, &t, DIR, "x"), Some(Err(Nfsstat3::NOENT)));
    }

    #[test]
    fn a_directory_replaced_by_a_rename_answers_nothing() {
        // RENAME e onto d, both directories made here (d empty): d's directory is gone,
        // the server says ESTALE for it; the cache must not answer NOENT for names in
        // it from its old completeness.
        const E: &[u8] = b"e-handle";
        let (n, t) = (Names::default(), Table::default());
        for (name, fh) in [("d", DIR), ("e", E)] {
            t.knows(fh);
            let mk = mkdir_call(b"parent", name);
            through(&n, &t, Proc::MKDIR, &mk, &made_reply(Proc::MKDIR, fh));
        }
        assert_eq!(answer(&n, &t, DIR, "x"), Some(Err(Nfsstat3::NOENT)));
        let mv = call(
            Proc::RENAME,
            &Args::Rename(nfs3::RenameArgs {
                from: d(b"parent", "e"),
                to: d(b"parent", "d"),
            }),
        );
        let moved = body(&Res::Rename(NfsResult::Ok(nfs3::RenameResOk {
            fromdir_wcc: WccData::default(),
            todir_wcc: WccData::default(),
        })));
        through(&n, &t, Proc::RENAME, &mv, &moved);
        assert_eq!(
            answer(&n, &t, DIR, "x"),
            None,
            "the replaced directory is gone"
        );
        t.knows(E); // its ctime changed: known again after a GETATTR
        assert_eq!(answer(&n, &t, b"parent", "d"), Some(Ok(E.to_vec())));
        assert_eq!(answer(&n, &t, E, "x"), Some(Err(Nfsstat3::NOENT)));
    }

    #[test]
    fn two_changes_of_one_name_in_flight_leave_it_unknown() {
        let (n, t) = (Names::default(), Table::default());
        t.knows(FILE);
        let mk = create_call(DIR, "x");
        let made = made_reply(Proc::CREATE, FILE);
        let rm = remove_call(DIR, "x");
        // Both orders in which the replies can be seen.
        for remove_first in [true, false] {
            n.drop_all(t.tick());
            n.before(Proc::CREATE, &mk, &t);
            let s_mk = t.stamp();
            n.before(Proc::REMOVE, &rm, &t);
            let s_rm = t.stamp();
            assert_eq!(answer(&n, &t, DIR, "x"), None, "in flight: forwarded");
            if remove_first {
                n.observe(Proc::REMOVE, &rm, &remove_ok(), s_rm, &t);
                n.observe(Proc::CREATE, &mk, &made, s_mk, &t);
            } else {
                n.observe(Proc::CREATE, &mk, &made, s_mk, &t);
                n.observe(Proc::REMOVE, &rm, &remove_ok(), s_rm, &t);
            }
            assert_eq!(
                answer(&n, &t, DIR, "x"),
                None,
                "remove_first={remove_first}: the server's order is unknown, so is the name"
            );
        }
    }

    #[test]
    fn a_new_directory_knows_all_its_names() {
        let (n, t) = (Names::default(), Table::default());
        t.knows(FILE);
        let mk = mkdir_call(b"parent", "new");
        through(&n, &t, Proc::MKDIR, &mk, &made_reply(Proc::MKDIR, DIR));
        assert_eq!(answer(&n, &t, DIR, "anything"), Some(Err(Nfsstat3::NOENT)));
        // A CREATE in flight in it: that name is asked upstream meanwhile.
        let cr = create_call(DIR, "f");
        n.before(Proc::CREATE, &cr, &t);
        let s = t.stamp();
        assert_eq!(answer(&n, &t, DIR, "f"), None);
        assert_eq!(answer(&n, &t, DIR, "other"), Some(Err(Nfsstat3::NOENT)));
        let ok = made_reply(Proc::CREATE, FILE);
        n.observe(Proc::CREATE, &cr, &ok, s, &t);
        assert_eq!(answer(&n, &t, DIR, "f"), Some(Ok(FILE.to_vec())));
        // A failed change (not NOENT) makes the directory incomplete.
        let rm = remove_call(DIR, "f");
        n.before(Proc::REMOVE, &rm, &t);
        let s = t.stamp();
        let denied = body(&Res::Remove(NfsResult::Fail(
            Nfsstat3::ACCES,
            nfs3::RemoveResFail {
                dir_wcc: WccData::default(),
            },
        )));
        n.observe(Proc::REMOVE, &rm, &denied, s, &t);
        assert_eq!(answer(&n, &t, DIR, "f"), None);
        assert_eq!(answer(&n, &t, DIR, "other"), None, "no longer complete");
    }

    #[test]
    fn lookup_without_the_objects_attributes_is_forwarded() {
        let (n, t) = (Names::default(), Table::default());
        let s = t.stamp();
        n.observe(
            Proc::LOOKUP,
            &lookup_call(DIR, "x"),
            &lookup_ok(FILE),
            s,
            &t,
        );
        assert_eq!(answer(&n, &t, DIR, "x"), None, "attributes unknown");
        t.knows(FILE);
        assert_eq!(answer(&n, &t, DIR, "x"), Some(Ok(FILE.to_vec())));
        // REMOVE through the proxy: the removed object's attributes are forgotten.
        let rm = remove_call(DIR, "x");
        through(&n, &t, Proc::REMOVE, &rm, &remove_ok());
        assert!(t.attr(FILE).is_none(), "link count changed: asked again");
    }

    #[test]
    fn a_second_change_of_a_name_in_flight_keeps_what_the_name_named() {
        // REMOVE x and then CREATE x forwarded before either reply: the first reply
        // seen still forgets the removed file's attributes (its link count changed),
        // in either order of the replies.
        for remove_first in [true, false] {
            let (n, t) = (Names::default(), Table::default());
            n.observe(
                Proc::LOOKUP,
                &lookup_call(DIR, "x"),
                &lookup_ok(FILE),
                t.stamp(),
                &t,
            );
            t.knows(FILE);
            let rm = remove_call(DIR, "x");
            n.before(Proc::REMOVE, &rm, &t);
            let rm_stamp = t.stamp();
            let create = create_call(DIR, "x");
            n.before(Proc::CREATE, &create, &t);
            let create_stamp = t.stamp();
            let created = made_reply(Proc::CREATE, b"new-handle");
            if remove_first {
                n.observe(Proc::REMOVE, &rm, &remove_ok(), rm_stamp, &t);
            } else {
                n.observe(Proc::CREATE, &create, &created, create_stamp, &t);
            }
            assert!(
                t.attr(FILE).is_none(),
                "the removed file's attributes are forgotten (remove reply first: {remove_first})"
            );
            assert_eq!(answer(&n, &t, DIR, "x"), None, "x is unknown");
        }
    }

    #[test]
    fn access_answers_only_bits_asked_before_and_forgets_at_setattr() {
        let (n, t) = (Names::default(), Table::default());
        let ask = |mask: u32| {
            call(
                Proc::ACCESS,
                &Args::Access(nfs3::AccessArgs {
                    object: Fh(FILE),
                    access: mask,
                }),
            )
        };
        let granted = body(&Res::Access(NfsResult::Ok(nfs3::AccessResOk {
            obj_attributes: None,
            access: 0x03,
        })));
        n.observe(Proc::ACCESS, &ask(0x07), &granted, t.stamp(), &t);
        assert!(n.answer(Proc::ACCESS, &ask(0x01), &t).is_some());
        assert!(n.answer(Proc::ACCESS, &ask(0x07), &t).is_some());
        assert!(
            n.answer(Proc::ACCESS, &ask(0x08), &t).is_none(),
            "never asked"
        );
        let chmod = call(
            Proc::SETATTR,
            &Args::Setattr(nfs3::SetattrArgs {
                object: Fh(FILE),
                new_attributes: nfs3::Sattr3 {
                    mode: Some(0o600),
                    ..Default::default()
                },
                guard: None,
            }),
        );
        n.before(Proc::SETATTR, &chmod, &t);
        assert!(
            n.answer(Proc::ACCESS, &ask(0x01), &t).is_none(),
            "mode changed"
        );
    }

    fn learn(n: &Names, t: &Table, dir: &[u8], name: &'static str, fh: &[u8]) {
        n.observe(
            Proc::LOOKUP,
            &lookup_call(dir, name),
            &lookup_ok(fh),
            t.stamp(),
            t,
        );
    }

    #[test]
    fn a_late_reply_after_the_tables_were_cleared_teaches_nothing() {
        let (n, t) = (Names::default(), Table::default());
        let lookup_stamp = t.stamp();
        let noent = body(&Res::Lookup(NfsResult::Fail(
            Nfsstat3::NOENT,
            nfs3::LookupResFail {
                dir_attributes: None,
            },
        )));
        // A CREATE of the name completes, then the tables are cleared (SIGUSR2, or full).
        let mk = create_call(DIR, "x");
        n.before(Proc::CREATE, &mk, &t);
        let s = t.stamp();
        let made = made_reply(Proc::CREATE, FILE);
        n.observe(Proc::CREATE, &mk, &made, s, &t);
        n.drop_all(t.tick());
        n.observe(
            Proc::LOOKUP,
            &lookup_call(DIR, "x"),
            &noent,
            lookup_stamp,
            &t,
        );
        assert_eq!(
            answer(&n, &t, DIR, "x"),
            None,
            "the NOENT is older than the CREATE"
        );
    }

    #[test]
    fn rename_onto_another_link_of_the_same_file_keeps_both_names() {
        let (n, t) = (Names::default(), Table::default());
        t.knows(FILE);
        learn(&n, &t, DIR, "a", FILE);
        learn(&n, &t, DIR, "b", FILE);
        // A RENAME within DIR, forwarded and answered OK.
        let rename = |from: &'static str, to: &'static str| {
            let mv = call(
                Proc::RENAME,
                &Args::Rename(nfs3::RenameArgs {
                    from: d(DIR, from),
                    to: d(DIR, to),
                }),
            );
            n.before(Proc::RENAME, &mv, &t);
            let s = t.stamp();
            let ok = body(&Res::Rename(NfsResult::Ok(nfs3::RenameResOk {
                fromdir_wcc: WccData::default(),
                todir_wcc: WccData::default(),
            })));
            n.observe(Proc::RENAME, &mv, &ok, s, &t);
        };
        rename("a", "b");
        t.knows(FILE); // attributes asked again after the change
        assert_eq!(
            answer(&n, &t, DIR, "a"),
            Some(Ok(FILE.to_vec())),
            "rename(2) did nothing"
        );
        assert_eq!(answer(&n, &t, DIR, "b"), Some(Ok(FILE.to_vec())));
        // A target not known: the new name is the file's, the old one unknown.
        learn(&n, &t, DIR, "c", FILE);
        rename("c", "unknown");
        t.knows(FILE);
        assert_eq!(answer(&n, &t, DIR, "c"), None);
        assert_eq!(answer(&n, &t, DIR, "unknown"), Some(Ok(FILE.to_vec())));
    }

    #[test]
    fn an_access_reply_racing_a_setattr_teaches_nothing() {
        let (n, t) = (Names::default(), Table::default());
        let ask = call(
            Proc::ACCESS,
            &Args::Access(nfs3::AccessArgs {
                object: Fh(FILE),
                access: 0x01,
            }),
        );
        let granted = body(&Res::Access(NfsResult::Ok(nfs3::AccessResOk {
            obj_attributes: None,
            access: 0x01,
        })));
        let chmod = call(
            Proc::SETATTR,
            &Args::Setattr(nfs3::SetattrArgs {
                object: Fh(FILE),
                new_attributes: nfs3::Sattr3 {
                    mode: Some(0o600),
                    ..Default::default()
                },
                guard: None,
            }),
        );
        let done = body(&Res::Setattr(NfsResult::Ok(nfs3::SetattrResOk {
            obj_wcc: WccData::default(),
        })));
        // Forwarded before the SETATTR, and forwarded while it ran: both replies come last.
        let before = t.stamp();
        n.before(Proc::SETATTR, &chmod, &t);
        let during = t.stamp();
        n.observe(Proc::SETATTR, &chmod, &done, during, &t);
        for s in [before, during] {
            n.observe(Proc::ACCESS, &ask, &granted, s, &t);
            assert!(
                n.answer(Proc::ACCESS, &ask, &t).is_none(),
                "stamp {s}: old grant"
            );
        }
        n.observe(Proc::ACCESS, &ask, &granted, t.stamp(), &t);
        assert!(
            n.answer(Proc::ACCESS, &ask, &t).is_some(),
            "asked after: learnt"
        );
    }
}
