#!/usr/bin/python3
"""A pass-through FUSE file system for tests: ROOT mounted at MOUNTPOINT, whose fsync
and fdatasync fail with EIO while the file FLAG exists (a cache disk that fails).

    faultyfs.py ROOT MOUNTPOINT FLAG     (foreground; SIGTERM unmounts)

Needs Debian's python3-fusepy (libfuse2) and root. Used by tests/cache_disk_failing.rs.
"""
import errno
import os
import sys

from fusepy import FUSE, FuseOSError, Operations


class Faulty(Operations):
    def __init__(self, root, flag):
        self.root, self.flag = root, flag

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
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + self._io(os.listdir, self._p(path))

    def mkdir(self, path, mode):
        self._io(os.mkdir, self._p(path), mode)

    def rmdir(self, path):
        self._io(os.rmdir, self._p(path))

    def unlink(self, path):
        self._io(os.unlink, self._p(path))

    def rename(self, old, new):
        self._io(os.rename, self._p(old), self._p(new))

    def chmod(self, path, mode):
        self._io(os.chmod, self._p(path), mode)

    def utimens(self, path, times=None):
        self._io(os.utime, self._p(path), times)

    def truncate(self, path, length, fh=None):
        self._io(os.truncate, self._p(path), length)

    def open(self, path, flags):
        return self._io(os.open, self._p(path), flags)

    def create(self, path, mode, fi=None):
        return self._io(os.open, self._p(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        return self._io(os.pread, fh, size, offset)

    def write(self, path, data, offset, fh):
        return self._io(os.pwrite, fh, data, offset)

    def release(self, path, fh):
        os.close(fh)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        if os.path.exists(self.flag):
            raise FuseOSError(errno.EIO)
        self._io(os.fdatasync if datasync else os.fsync, fh)

    def statfs(self, path):
        s = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(s, k) for k in keys}


if __name__ == "__main__":
    root, mountpoint, flag = sys.argv[1:4]
    FUSE(Faulty(root, flag), mountpoint, foreground=True, nothreads=False)
