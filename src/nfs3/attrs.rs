//! Where the attributes are in each NFSv3 reply, and which file handle each describes.
//!
//! A caching proxy must patch attributes the server sends (e.g. the size and mtime of a
//! file whose writes are still in the local cache). [`Res::for_each_attr_mut`] walks
//! every `fattr3` and `wcc_attr` in a decoded reply and names the handle it belongs to,
//! taken from the reply itself or from the call it answers; the caller then re-encodes
//! the reply with [`Res::encode`].

use super::{Args, Fattr3, Fh, NfsResult, Res, WccAttr, WccData};

/// One set of attributes inside a reply, lent out for rewriting.
#[derive(Debug, PartialEq, Eq)]
pub enum AttrMut<'r> {
    /// A full `fattr3`: a `post_op_attr`, the `after` half of `wcc_data`, GETATTR's
    /// attributes, or a READDIRPLUS entry's `name_attributes`.
    Post(&'r mut Fattr3),
    /// A `wcc_attr`: the `before` half of `wcc_data` (size, mtime, ctime before the call).
    Pre(&'r mut WccAttr),
}

/// The callback's type once erased, so the helpers below need no generics.
type Visit<'f> = dyn FnMut(Option<Fh<'_>>, AttrMut<'_>) + 'f;

fn post(f: &mut Visit<'_>, owner: Option<Fh<'_>>, attr: &mut Option<Fattr3>) {
    if let Some(a) = attr {
        f(owner, AttrMut::Post(a));
    }
}

fn wcc(f: &mut Visit<'_>, owner: Option<Fh<'_>>, w: &mut WccData) {
    if let Some(b) = &mut w.before {
        f(owner, AttrMut::Pre(b));
    }
    post(f, owner, &mut w.after);
}

impl<'a> Res<'a> {
    /// Calls `f` on every attribute set present in the reply, with the handle it
    /// describes when that is known.
    ///
    /// `args` is the call this reply answers: its [`Args::fh`] owns the attributes of
    /// the object or directory operated on, and its [`Args::fh2`] RENAME's `todir_wcc` and
    /// LINK's `linkdir_wcc`. Handles carried in the reply own the rest: LOOKUP's `object`,
    /// CREATE/MKDIR/SYMLINK/MKNOD's `obj` (the owner is `None` if the server left the
    /// handle out), and each READDIRPLUS entry's `name_handle`. If `args` belongs to
    /// another procedure, owners taken from it are `None`.
    ///
    /// Per reply (both arms unless marked): GETATTR `obj_attributes` (ok only);
    /// SETATTR `obj_wcc`; LOOKUP `obj_attributes` (ok), `dir_attributes`; ACCESS, FSSTAT,
    /// FSINFO, PATHCONF `obj_attributes`; READLINK `symlink_attributes`; READ
    /// `file_attributes`; WRITE, COMMIT `file_wcc`; CREATE, MKDIR, SYMLINK, MKNOD
    /// `obj_attributes` (ok), `dir_wcc`; REMOVE, RMDIR `dir_wcc`; RENAME `fromdir_wcc`,
    /// `todir_wcc`; LINK `file_attributes`, `linkdir_wcc`; READDIR `dir_attributes`;
    /// READDIRPLUS `dir_attributes` and each entry's `name_attributes` (ok).
    pub fn for_each_attr_mut(
        &mut self,
        args: &Args<'_>,
        mut f: impl FnMut(Option<Fh<'_>>, AttrMut<'_>),
    ) {
        let f: &mut Visit<'_> = &mut f;
        let (fh, fh2) = if args.proc() == self.proc() {
            (args.fh(), args.fh2())
        } else {
            (None, None)
        };
        match self {
            Res::Null => {}
            Res::Getattr(NfsResult::Ok(ok)) => f(fh, AttrMut::Post(&mut ok.obj_attributes)),
            Res::Getattr(NfsResult::Fail(..)) => {}
            Res::Setattr(NfsResult::Ok(r)) => wcc(f, fh, &mut r.obj_wcc),
            Res::Setattr(NfsResult::Fail(_, r)) => wcc(f, fh, &mut r.obj_wcc),
            Res::Lookup(NfsResult::Ok(ok)) => {
                post(f, Some(ok.object), &mut ok.obj_attributes);
                post(f, fh, &mut ok.dir_attributes);
            }
            Res::Lookup(NfsResult::Fail(_, r)) => post(f, fh, &mut r.dir_attributes),
            Res::Access(NfsResult::Ok(r)) => post(f, fh, &mut r.obj_attributes),
            Res::Access(NfsResult::Fail(_, r)) => post(f, fh, &mut r.obj_attributes),
            Res::Readlink(NfsResult::Ok(r)) => post(f, fh, &mut r.symlink_attributes),
            Res::Readlink(NfsResult::Fail(_, r)) => post(f, fh, &mut r.symlink_attributes),
            Res::Read(NfsResult::Ok(r)) => post(f, fh, &mut r.file_attributes),
            Res::Read(NfsResult::Fail(_, r)) => post(f, fh, &mut r.file_attributes),
            Res::Write(NfsResult::Ok(r)) => wcc(f, fh, &mut r.file_wcc),
            Res::Write(NfsResult::Fail(_, r)) => wcc(f, fh, &mut r.file_wcc),
            Res::Create(NfsResult::Ok(ok))
            | Res::Mkdir(NfsResult::Ok(ok))
            | Res::Symlink(NfsResult::Ok(ok))
            | Res::Mknod(NfsResult::Ok(ok)) => {
                post(f, ok.obj, &mut ok.obj_attributes);
                wcc(f, fh, &mut ok.dir_wcc);
            }
            Res::Create(NfsResult::Fail(_, r))
            | Res::Mkdir(NfsResult::Fail(_, r))
            | Res::Symlink(NfsResult::Fail(_, r))
            | Res::Mknod(NfsResult::Fail(_, r)) => wcc(f, fh, &mut r.dir_wcc),
            Res::Remove(NfsResult::Ok(r)) | Res::Rmdir(NfsResult::Ok(r)) => {
                wcc(f, fh, &mut r.dir_wcc)
            }
            Res::Remove(NfsResult::Fail(_, r)) | Res::Rmdir(NfsResult::Fail(_, r)) => {
                wcc(f, fh, &mut r.dir_wcc)
            }
            Res::Rename(NfsResult::Ok(r)) => {
                wcc(f, fh, &mut r.fromdir_wcc);
                wcc(f, fh2, &mut r.todir_wcc);
            }
            Res::Rename(NfsResult::Fail(_, r)) => {
                wcc(f, fh, &mut r.fromdir_wcc);
                wcc(f, fh2, &mut r.todir_wcc);
            }
            Res::Link(NfsResult::Ok(r)) => {
                post(f, fh, &mut r.file_attributes);
                wcc(f, fh2, &mut r.linkdir_wcc);
            }
            Res::Link(NfsResult::Fail(_, r)) => {
                post(f, fh, &mut r.file_attributes);
                wcc(f, fh2, &mut r.linkdir_wcc);
            }
            Res::Readdir(NfsResult::Ok(r)) => post(f, fh, &mut r.dir_attributes),
            Res::Readdir(NfsResult::Fail(_, r)) => post(f, fh, &mut r.dir_attributes),
            Res::Readdirplus(NfsResult::Ok(ok)) => {
                post(f, fh, &mut ok.dir_attributes);
                for e in &mut ok.reply.entries {
                    post(f, e.name_handle, &mut e.name_attributes);
                }
            }
            Res::Readdirplus(NfsResult::Fail(_, r)) => post(f, fh, &mut r.dir_attributes),
            Res::Fsstat(NfsResult::Ok(r)) => post(f, fh, &mut r.obj_attributes),
            Res::Fsstat(NfsResult::Fail(_, r)) => post(f, fh, &mut r.obj_attributes),
            Res::Fsinfo(NfsResult::Ok(r)) => post(f, fh, &mut r.obj_attributes),
            Res::Fsinfo(NfsResult::Fail(_, r)) => post(f, fh, &mut r.obj_attributes),
            Res::Pathconf(NfsResult::Ok(r)) => post(f, fh, &mut r.obj_attributes),
            Res::Pathconf(NfsResult::Fail(_, r)) => post(f, fh, &mut r.obj_attributes),
            Res::Commit(NfsResult::Ok(r)) => wcc(f, fh, &mut r.file_wcc),
            Res::Commit(NfsResult::Fail(_, r)) => wcc(f, fh, &mut r.file_wcc),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::nfs3::samples;
    use crate::nfs3::{Proc, WriteArgs};

    /// Every `fattr3` and `wcc_attr` the samples carry is visited exactly once, with an
    /// owner whenever the call or the reply names one.
    #[test]
    fn visits_every_attribute_with_its_owner() {
        for args in samples::all_args() {
            for mut res in samples::all_res()
                .into_iter()
                .filter(|r| r.proc() == args.proc())
            {
                let mut body = BytesMut::new();
                res.encode(&mut body);
                let (mut post, mut pre) = (0, 0);
                res.for_each_attr_mut(&args, |owner, a| {
                    assert!(owner.is_some(), "{} attrs without owner", args.proc());
                    match a {
                        AttrMut::Post(a) => {
                            assert_eq!(a.fileid, samples::FILEID, "{}", args.proc());
                            post += 1;
                        }
                        AttrMut::Pre(_) => pre += 1,
                    }
                });
                // A fattr3 is 84 bytes that begin with ftype NF3REG: count them in the body.
                let fileid = samples::FILEID.to_be_bytes();
                let in_body = body.windows(8).filter(|w| *w == fileid).count();
                assert_eq!(post, in_body, "{} {:?}", args.proc(), res.status());
                if pre > 0 {
                    assert!(post > 0);
                }
            }
        }
    }

    #[test]
    fn rewritten_write_reply_reencodes_with_new_size() {
        let args = samples::all_args()
            .into_iter()
            .find(|a| matches!(a, Args::Write(WriteArgs { .. })))
            .unwrap();
        let mut res = samples::all_res()
            .into_iter()
            .find(|r| r.proc() == Proc::WRITE && r.status() == Some(crate::nfs3::Nfsstat3::OK))
            .unwrap();
        res.for_each_attr_mut(&args, |owner, a| {
            assert_eq!(owner, args.fh());
            match a {
                AttrMut::Post(a) => a.size = 777,
                AttrMut::Pre(b) => b.size = 666,
            }
        });
        let mut body = BytesMut::new();
        res.encode(&mut body);
        let Res::Write(NfsResult::Ok(ok)) = Res::decode(Proc::WRITE, &body).unwrap() else {
            panic!("not a WRITE ok reply");
        };
        assert_eq!(ok.file_wcc.before.unwrap().size, 666);
        assert_eq!(ok.file_wcc.after.unwrap().size, 777);
    }

    #[test]
    fn mismatched_args_give_no_owner() {
        let mut res = samples::all_res()
            .into_iter()
            .find(|r| r.proc() == Proc::GETATTR && r.status() == Some(crate::nfs3::Nfsstat3::OK))
            .unwrap();
        let mut seen = 0;
        res.for_each_attr_mut(&Args::Null, |owner, _| {
            assert_eq!(owner, None);
            seen += 1;
        });
        assert_eq!(seen, 1);
    }
}
