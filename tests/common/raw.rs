//! Raw ONC RPC over TCP, built and parsed by hand (not with the proxy's own codec), for
//! tests that need exact control of the bytes: bad input, retransmissions.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const LAST: u32 = 0x8000_0000;

pub fn be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// An RPC call with AUTH_SYS (uid 0) and raw argument bytes.
pub fn call(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [xid, 0, 2, prog, vers, proc_] {
        m.extend_from_slice(&be(v));
    }
    // AUTH_SYS: stamp, machinename "t", uid 0, gid 0, no gids.
    let mut cred = Vec::new();
    for v in [1, 1] {
        cred.extend_from_slice(&be(v));
    }
    cred.extend_from_slice(b"t\0\0\0");
    for v in [0, 0, 0] {
        cred.extend_from_slice(&be(v));
    }
    m.extend_from_slice(&be(1));
    m.extend_from_slice(&be(cred.len() as u32));
    m.extend_from_slice(&cred);
    m.extend_from_slice(&be(0));
    m.extend_from_slice(&be(0));
    m.extend_from_slice(args);
    m
}

pub fn send(s: &mut TcpStream, body: &[u8]) {
    let mut rec = be(body.len() as u32 | LAST).to_vec();
    rec.extend_from_slice(body);
    s.write_all(&rec).unwrap();
}

/// Reads one reply record; None on EOF.
pub fn recv(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut hdr = [0u8; 4];
    if s.read_exact(&mut hdr).is_err() {
        return None;
    }
    let len = (u32::from_be_bytes(hdr) & !LAST) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

pub fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

/// (xid, reply_stat, accept_stat or reject_stat, rest after the stat).
pub fn parse(reply: &[u8]) -> (u32, u32, u32, Vec<u8>) {
    assert_eq!(word(reply, 1), 1, "not a REPLY");
    let stat = word(reply, 2);
    if stat == 0 {
        // verifier: flavor, length (0 for AUTH_NONE)
        let vlen = word(reply, 4) as usize;
        let at = 20 + vlen.div_ceil(4) * 4;
        let accept = u32::from_be_bytes(reply[at..at + 4].try_into().unwrap());
        (word(reply, 0), 0, accept, reply[at + 4..].to_vec())
    } else {
        (word(reply, 0), 1, word(reply, 3), reply[16..].to_vec())
    }
}

/// (xid, reply_stat, accept_stat or reject_stat).
pub fn head(reply: &[u8]) -> [u32; 3] {
    let (x, r, s, _) = parse(reply);
    [x, r, s]
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}
