#!/usr/bin/python3
"""A pass-through FUSE file system for tests: ROOT mounted at MOUNTPOINT, whose fsync
and fdatasync fail with EIO while the file FLAG exists (a cache disk that fails).

    faultyfs.py ROOT MOUNTPOINT FLAG [--lose-unsynced]   (foreground; SIGTERM unmounts)

With --lose-unsynced, file data written since a file's last successful fsync is held
in memory (reads and sizes see it), and creating the file FLAG.cut throws it all away
(faultyfs removes FLAG.cut when done): a power failure, as far as file data goes
(creating, renaming, truncating and removing files are applied at once). The process
using the files must be gone by then, as after a real power cut.

Needs Debian's python3-fusepy (libfuse2) and root. Used by tests/cache_disk_failing.rs.
"""
import errno
import os
import sys
import threading

from fusepy import FUSE, FuseOSError, Operations


class Faulty(Operations):
    def __init__(self, root, flag, lose_unsynced=False):
        self.root, self.flag = root, flag
        self.lose = lose_unsynced
        # path -> [(offset, bytes)], in order: written, not yet fsynced.
        self.pending = {}
        self._mu = threading.Lock()
        threading.Thread(target=self._watch_cut, daemon=True).start()

    def _watch_cut(self):
        cut = self.flag + ".cut"
        while True:
            if os.path.exists(cut):
                with self._mu:
                    self.pending = {}
                os.unlink(cut)
            threading.Event().wait(0.05)

    def _apply(self, path):
        """Writes a file's pending data to the underlying file (not synced), through a
        descriptor of its own: the caller's may be read-only (fsync of an O_RDONLY fd)."""
        writes = self.pending.pop(path, [])
        if not writes:
            return
        fd = os.open(self._p(path), os.O_WRONLY)
        try:
            for off, data in writes:
                os.pwrite(fd, data, off)
        finally:
            os.close(fd)

    def _end(self, path):
        return max((off + len(d) for off, d in self.pending.get(path, [])), default=0)

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _io(self, f, *a):
        try:
            return f(*a)
        except OSError as e:
            raise FuseOSError(e.errno)

    def getattr(self, path, fh=None):
        st = self._io(os.lstat, self._p(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime", "st_mtime", "st_ctime", "st_blocks")
        out = {k: getattr(st, k) for k in keys}
        with self._mu:
            out["st_size"] = max(out["st_size"], self._end(path))
        return out

    def readdir(self, path, fh):
        return [".", ".."] + self._io(os.listdir, self._p(path))

    def mkdir(self, path, mode):
        self._io(os.mkdir, self._p(path), mode)

    def rmdir(self, path):
        self._io(os.rmdir, self._p(path))

    def unlink(self, path):
        self._io(os.unlink, self._p(path))
        with self._mu:
            self.pending.pop(path, None)

    def rename(self, old, new):
        self._io(os.rename, self._p(old), self._p(new))
        with self._mu:
            self.pending.pop(new, None)
            if old in self.pending:
                self.pending[new] = self.pending.pop(old)

    def chmod(self, path, mode):
        self._io(os.chmod, self._p(path), mode)

    def utimens(self, path, times=None):
        self._io(os.utime, self._p(path), times)

    def truncate(self, path, length, fh=None):
        with self._mu:
            self._apply(path)
        self._io(os.truncate, self._p(path), length)

    def open(self, path, flags):
        return self._io(os.open, self._p(path), flags)

    def create(self, path, mode, fi=None):
        return self._io(os.open, self._p(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        base = self._io(os.pread, fh, size, offset)
        with self._mu:
            writes = list(self.pending.get(path, []))
            end = max(os.fstat(fh).st_size, self._end(path))
        if not writes:
            return base
        buf = bytearray(base)
        want = max(0, min(size, end - offset))
        if len(buf) < want:
            buf.extend(bytes(want - len(buf)))
        for off, data in writes:
            lo, hi = max(off, offset), min(off + len(data), offset + want)
            if lo < hi:
                buf[lo - offset:hi - offset] = data[lo - off:hi - off]
        return bytes(buf)

    def write(self, path, data, offset, fh):
        if self.lose:
            with self._mu:
                self.pending.setdefault(path, []).append((offset, bytes(data)))
            return len(data)
        return self._io(os.pwrite, fh, data, offset)

    def release(self, path, fh):
        os.close(fh)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        if os.path.exists(self.flag):
            raise FuseOSError(errno.EIO)
        with self._mu:
            self._apply(path)
        self._io(os.fdatasync if datasync else os.fsync, fh)

    def statfs(self, path):
        s = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(s, k) for k in keys}


if __name__ == "__main__":
    root, mountpoint, flag = sys.argv[1:4]
    FUSE(Faulty(root, flag, "--lose-unsynced" in sys.argv[4:]), mountpoint,
         foreground=True, nothreads=False)
