//! A small pipelined NFSv3 client for benchmarks: one TCP connection, many calls in flight
//! (like the kernel client's slot table), AUTH_SYS as root. Calls are matched to replies by
//! xid by a reader task. Messages are encoded by hand (independent of the proxy's codec).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub const NFS: u32 = 100003;
pub const MOUNT: u32 = 100005;

/// Calls waiting for their reply, by xid; `None` once the connection is closed (a call
/// then fails at once instead of waiting forever).
type Waiters = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Bytes>>>>>;

#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Bytes>,
    waiters: Waiters,
    xid: Arc<AtomicU32>,
}

fn put_opaque(b: &mut BytesMut, data: &[u8]) {
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.put_bytes(0, (4 - data.len() % 4) % 4);
}

/// A cursor over reply bytes.
pub struct R<'a>(pub &'a [u8]);

impl<'a> R<'a> {
    pub fn u32(&mut self) -> u32 {
        let v = u32::from_be_bytes(self.0[..4].try_into().unwrap());
        self.0 = &self.0[4..];
        v
    }
    pub fn u64(&mut self) -> u64 {
        let v = u64::from_be_bytes(self.0[..8].try_into().unwrap());
        self.0 = &self.0[8..];
        v
    }
    pub fn skip(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }
    pub fn opaque(&mut self) -> &'a [u8] {
        let n = self.u32() as usize;
        let d = &self.0[..n];
        self.0 = &self.0[n + (4 - n % 4) % 4..];
        d
    }
    /// post_op_attr: returns the file size if present.
    pub fn post_op_attr(&mut self) -> Option<u64> {
        if self.u32() == 1 {
            self.skip(20);
            let size = self.u64();
            self.skip(84 - 28);
            Some(size)
        } else {
            None
        }
    }
    pub fn wcc(&mut self) {
        if self.u32() == 1 {
            self.skip(24);
        }
        self.post_op_attr();
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (mut rd, wr) = s.into_split();
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        tokio::spawn(async move {
            let mut wr = tokio::io::BufWriter::with_capacity(1 << 20, wr);
            while let Some(m) = rx.recv().await {
                if wr.write_all(&m).await.is_err() {
                    return;
                }
                if rx.is_empty() && wr.flush().await.is_err() {
                    return;
                }
            }
        });
        let w = waiters.clone();
        tokio::spawn(async move {
            // Records are read straight into one growing buffer (one copy from the
            // socket, no zero-filling) and handed out as slices of it.
            let mut buf = BytesMut::with_capacity(2 << 20);
            'conn: loop {
                while buf.len() < 4 {
                    if !matches!(rd.read_buf(&mut buf).await, Ok(n) if n > 0) {
                        break 'conn;
                    }
                }
                let len = (u32::from_be_bytes(buf[..4].try_into().unwrap()) & 0x7fff_ffff) as usize;
                if buf.capacity() < 4 + len {
                    buf.reserve(4 + len - buf.len());
                }
                while buf.len() < 4 + len {
                    if !matches!(rd.read_buf(&mut buf).await, Ok(n) if n > 0) {
                        break 'conn;
                    }
                }
                let mut rec = buf.split_to(4 + len);
                let body = rec.split_off(4).freeze();
                if buf.capacity() < 64 << 10 {
                    buf.reserve(2 << 20);
                }
                let xid = u32::from_be_bytes(body[..4].try_into().unwrap());
                let t = w.lock().unwrap().as_mut().and_then(|m| m.remove(&xid));
                if let Some(t) = t {
                    let _ = t.send(body);
                }
            }
            // Closed (servers close idle connections): waiting calls fail, later ones too.
            *w.lock().unwrap() = None;
        });
        Ok(Client {
            tx,
            waiters,
            xid: Arc::new(AtomicU32::new(1)),
        })
    }

    /// One call of version 3 (NFSv3, MOUNT v3); returns the result bytes after the
    /// accepted-reply header.
    pub async fn call(&self, prog: u32, proc_: u32, args: &[u8]) -> Bytes {
        self.call_vers(prog, 3, proc_, args).await
    }

    /// The portmapper's NULL (program 100000, version 2), which gridvfs answers itself:
    /// a round trip through the proxy that does no work and goes nowhere upstream.
    pub async fn pmap_null(&self) {
        self.call_vers(100_000, 2, 0, &[]).await;
    }

    /// One call of any program and version.
    pub async fn call_vers(&self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Bytes {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let mut m = BytesMut::with_capacity(args.len() + 100);
        m.put_u32(0); // record mark, filled below
        for v in [xid, 0, 2, prog, vers, proc_] {
            m.put_u32(v);
        }
        let mut cred = BytesMut::new();
        cred.put_u32(1);
        put_opaque(&mut cred, b"bench");
        for v in [0, 0, 0] {
            cred.put_u32(v);
        }
        m.put_u32(1);
        put_opaque(&mut m, &cred);
        m.put_u32(0);
        m.put_u32(0);
        m.put_slice(args);
        let len = (m.len() - 4) as u32 | 0x8000_0000;
        m[..4].copy_from_slice(&len.to_be_bytes());
        let (t, r) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap()
            .as_mut()
            .expect("connection closed by the server")
            .insert(xid, t);
        self.tx
            .send(m.freeze())
            .await
            .expect("connection writer gone");
        let reply = r.await.expect("connection closed");
        let mut rr = R(&reply[8..]);
        assert_eq!(rr.u32(), 0, "call denied");
        rr.u32();
        let vlen = rr.u32() as usize;
        rr.skip(vlen.div_ceil(4) * 4);
        assert_eq!(rr.u32(), 0, "call not accepted");
        let at = reply.len() - rr.0.len();
        reply.slice(at..)
    }

    pub async fn mnt(&self, export: &str) -> Vec<u8> {
        let mut a = BytesMut::new();
        put_opaque(&mut a, export.as_bytes());
        let r = self.call(MOUNT, 1, &a).await;
        let mut r = R(&r);
        assert_eq!(r.u32(), 0, "MNT failed");
        r.opaque().to_vec()
    }

    fn diropargs(dir: &[u8], name: &str) -> BytesMut {
        let mut a = BytesMut::new();
        put_opaque(&mut a, dir);
        put_opaque(&mut a, name.as_bytes());
        a
    }

    pub async fn lookup(&self, dir: &[u8], name: &str) -> Option<Vec<u8>> {
        let r = self.call(NFS, 3, &Self::diropargs(dir, name)).await;
        let mut r = R(&r);
        (r.u32() == 0).then(|| r.opaque().to_vec())
    }

    pub async fn getattr(&self, fh: &[u8]) -> u64 {
        let mut a = BytesMut::new();
        put_opaque(&mut a, fh);
        let r = self.call(NFS, 1, &a).await;
        let mut r = R(&r);
        assert_eq!(r.u32(), 0, "GETATTR failed");
        r.skip(20);
        r.u64()
    }

    async fn create_like(&self, proc_: u32, dir: &[u8], name: &str, tail: &[u8]) -> Vec<u8> {
        let mut a = Self::diropargs(dir, name);
        a.put_slice(tail);
        let r = self.call(NFS, proc_, &a).await;
        let mut r = R(&r);
        assert_eq!(r.u32(), 0, "CREATE/MKDIR {name} failed");
        assert_eq!(r.u32(), 1, "no handle in reply");
        r.opaque().to_vec()
    }

    /// CREATE UNCHECKED with mode 0644 (truncates an existing file to 0 via size=0).
    pub async fn create(&self, dir: &[u8], name: &str) -> Vec<u8> {
        let mut t = BytesMut::new();
        t.put_u32(0); // UNCHECKED
        for v in [1, 0o644, 0, 0, 1] {
            t.put_u32(v); // mode set, uid/gid unset, size set...
        }
        t.put_u64(0); // size 0
        t.put_u32(0);
        t.put_u32(0); // atime, mtime: don't change
        self.create_like(8, dir, name, &t).await
    }

    /// SETATTR of the size only (what the Linux client sends for `open(O_TRUNC)` or
    /// `truncate(2)` on a file it knows).
    pub async fn set_size(&self, fh: &[u8], size: u64) {
        let mut a = BytesMut::new();
        put_opaque(&mut a, fh);
        for v in [0, 0, 0, 1] {
            a.put_u32(v); // mode, uid, gid unset; size set...
        }
        a.put_u64(size);
        for v in [0, 0, 0] {
            a.put_u32(v); // atime, mtime: don't change; no guard
        }
        let r = self.call(NFS, 2, &a).await;
        assert_eq!(R(&r).u32(), 0, "SETATTR(size) failed");
    }

    pub async fn mkdir(&self, dir: &[u8], name: &str) -> Vec<u8> {
        if let Some(fh) = self.lookup(dir, name).await {
            return fh;
        }
        let mut t = BytesMut::new();
        for v in [1, 0o755, 0, 0, 0, 0, 0] {
            t.put_u32(v);
        }
        self.create_like(9, dir, name, &t).await
    }

    /// SYMLINK `name` → `target` in `dir` (attributes unset).
    pub async fn symlink(&self, dir: &[u8], name: &str, target: &str) -> Vec<u8> {
        let mut t = BytesMut::new();
        for _ in 0..6 {
            t.put_u32(0); // sattr3: nothing set
        }
        put_opaque(&mut t, target.as_bytes());
        self.create_like(10, dir, name, &t).await
    }

    /// READLINK: the link's target.
    pub async fn readlink(&self, fh: &[u8]) -> String {
        let mut a = BytesMut::new();
        put_opaque(&mut a, fh);
        let r = self.call(NFS, 5, &a).await;
        let mut r = R(&r);
        assert_eq!(r.u32(), 0, "READLINK failed");
        r.post_op_attr();
        String::from_utf8(r.opaque().to_vec()).unwrap()
    }

    /// REMOVE `name` from `dir`; true if it was there.
    pub async fn remove(&self, dir: &[u8], name: &str) -> bool {
        let r = self.call(NFS, 12, &Self::diropargs(dir, name)).await;
        R(&r).u32() == 0
    }

    /// READ; returns (bytes, eof).
    pub async fn read(&self, fh: &[u8], off: u64, count: u32) -> (usize, bool) {
        let mut a = BytesMut::new();
        put_opaque(&mut a, fh);
        a.put_u64(off);
        a.put_u32(count);
        let r = self.call(NFS, 6, &a).await;
        let mut r = R(&r);
        assert_eq!(r.u32(), 0, "READ failed");
        r.post_op_attr();
        let n = r.u32() as usize;
        let eof = r.u32() == 1;
        assert_eq!(r.opaque().len(), n);
        (n, eof)
    }

    /// WRITE UNSTABLE; returns the verifier.
    pub async fn write(&self, fh: &[u8], off: u64, data: &[u8]) -> [u8; 8] {
        let mut a = BytesMut::with_capacity(data.len() + 100);
        put_opaque(&mut a, fh);
        a.put_u64(off);
        a.put_u32(data.len() as u32);
        a.put_u32(0); // UNSTABLE
        put_opaque(&mut a, data);
        let r = self.call(NFS, 7, &a).await;
        let mut r = R(&r);
        assert_eq!(r.u32(), 0, "WRITE failed");
        r.wcc();
        assert_eq!(r.u32() as usize, data.len());
        r.u32();
        r.0[..8].try_into().unwrap()
    }

    /// READ; returns (data, eof). The data is a slice of the reply, not a copy.
    pub async fn read_data(&self, fh: &[u8], off: u64, count: u32) -> (Bytes, bool) {
        let mut a = BytesMut::new();
        put_opaque(&mut a, fh);
        a.put_u64(off);
        a.put_u32(count);
        let reply = self.call(NFS, 6, &a).await;
        let mut r = R(&reply);
        assert_eq!(r.u32(), 0, "READ failed");
        r.post_op_attr();
        let n = r.u32() as usize;
        let eof = r.u32() == 1;
        assert_eq!(r.u32() as usize, n, "READ count and data length differ");
        let at = reply.len() - r.0.len();
        (reply.slice(at..at + n), eof)
    }

    /// COMMIT of the whole file; returns the write verifier.
    pub async fn commit_verf(&self, fh: &[u8]) -> [u8; 8] {
        let mut a = BytesMut::new();
        put_opaque(&mut a, fh);
        a.put_u64(0);
        a.put_u32(0);
        let r = self.call(NFS, 21, &a).await;
        let mut r = R(&r);
        assert_eq!(r.u32(), 0, "COMMIT failed");
        r.wcc();
        r.0[..8].try_into().unwrap()
    }

    pub async fn commit(&self, fh: &[u8]) {
        let mut a = BytesMut::new();
        put_opaque(&mut a, fh);
        a.put_u64(0);
        a.put_u32(0);
        let r = self.call(NFS, 21, &a).await;
        assert_eq!(R(&r).u32(), 0, "COMMIT failed");
    }
}

/// Reads `len` bytes of `fh` sequentially in `io`-sized READs with `window` in flight.
pub async fn seq_read(c: &Client, fh: &[u8], len: u64, io: u32, window: usize) -> u64 {
    let mut set = tokio::task::JoinSet::new();
    let mut off = 0u64;
    let mut total = 0u64;
    loop {
        while set.len() < window && off < len {
            let (c, fh) = (c.clone(), fh.to_vec());
            let n = (io as u64).min(len - off) as u32;
            set.spawn(async move { c.read(&fh, off, n).await.0 as u64 });
            off += n as u64;
        }
        match set.join_next().await {
            Some(r) => total += r.unwrap(),
            None => return total,
        }
    }
}

/// Writes `len` bytes sequentially (UNSTABLE, `window` in flight), then COMMITs.
pub async fn seq_write(c: &Client, fh: &[u8], len: u64, io: u32, window: usize) {
    let data = Bytes::from((0..io).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let mut set = tokio::task::JoinSet::new();
    let mut off = 0u64;
    loop {
        while set.len() < window && off < len {
            let (c, fh, d) = (c.clone(), fh.to_vec(), data.clone());
            let n = (io as u64).min(len - off) as usize;
            set.spawn(async move { c.write(&fh, off, &d[..n]).await });
            off += n as u64;
        }
        if set.join_next().await.is_none() {
            break;
        }
    }
    c.commit(fh).await;
}
