//! Duplicate request cache for retransmissions.
//!
//! A client that gets no reply in time (or whose connection broke) sends the same call
//! again with the same xid. The server's own duplicate request cache cannot recognise it
//! behind the proxy, because the proxy gives every forwarded call a fresh xid. So the proxy
//! keeps its own, keyed like the Linux server's: client address, xid, program, version,
//! procedure, record length and a hash of the credential and the start of the arguments.
//!
//! - A retransmission of a call still in flight is not forwarded again: it waits for the
//!   original's reply.
//! - A retransmission of a completed *non-idempotent* call (CREATE, REMOVE, RENAME, ...)
//!   gets the original reply again, so a retried REMOVE does not turn into NOENT.
//!
//! Bounded: completed entries live at most `ttl` and at most `cap` of them are kept
//! (oldest evicted first); in-progress entries are bounded by the in-flight limits.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::nfs3::Proc;
use crate::rpc::CallHeader;

/// How many bytes of arguments go into the key's hash (enough to tell calls apart).
const HASHED_ARG_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    ip: IpAddr,
    xid: u32,
    digest: u64,
}

impl Key {
    pub fn new(ip: IpAddr, h: &CallHeader<'_>, rec: &[u8]) -> Key {
        let mut s = DefaultHasher::new();
        (h.prog, h.vers, h.proc_, rec.len()).hash(&mut s);
        h.cred.body.hash(&mut s);
        let args = &rec[h.args_at..];
        args[..args.len().min(HASHED_ARG_BYTES)].hash(&mut s);
        Key {
            ip,
            xid: h.xid,
            digest: s.finish(),
        }
    }
}

impl Key {
    /// The key of the same call made by another principal (the server role's account):
    /// clients tunnelled through one sshd all come from 127.0.0.1, and two accounts'
    /// calls must never share a cached reply.
    pub fn salted(self, salt: &str) -> Key {
        let mut s = DefaultHasher::new();
        (self.digest, salt).hash(&mut s);
        Key {
            digest: s.finish(),
            ..self
        }
    }
}

/// Whether a completed call's reply is kept for replay.
pub fn worth_caching(p: Proc) -> bool {
    p == Proc::SETATTR || p.changes_namespace()
}

enum Entry {
    /// Forwarded at `since`; retransmissions wait in the list.
    InProgress {
        since: Instant,
        waiters: Vec<oneshot::Sender<Bytes>>,
    },
    Done(Bytes),
}

/// A retransmission of a call in flight for longer than this is forwarded again instead
/// of waiting: the server may have dropped the first copy (servers do drop requests),
/// and a client whose retransmissions were all absorbed would wait for ever.
const RESEND_AFTER: Duration = Duration::from_secs(30);

/// What to do with a call, given what the cache knows.
pub enum Lookup {
    /// First time seen: forward it, then call `finish` (or `abandon`).
    New,
    /// The same call is in flight: wait for its reply.
    Wait(oneshot::Receiver<Bytes>),
    /// The same call completed: send this reply again.
    Replay(Bytes),
}

pub struct Drc {
    inner: Mutex<Inner>,
    ttl: Duration,
    cap: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Completed entries in completion order, for expiry and eviction.
    done: VecDeque<(Key, Instant)>,
}

impl Drc {
    pub fn new(ttl: Duration, cap: usize) -> Drc {
        Drc {
            inner: Mutex::default(),
            ttl,
            cap,
        }
    }

    pub fn begin(&self, key: Key) -> Lookup {
        let mut g = self.inner.lock().expect("drc lock");
        let now = Instant::now();
        match g.map.get_mut(&key) {
            None => {
                g.map.insert(
                    key,
                    Entry::InProgress {
                        since: now,
                        waiters: Vec::new(),
                    },
                );
                Lookup::New
            }
            Some(Entry::InProgress { since, .. }) if now.duration_since(*since) >= RESEND_AFTER => {
                // Forward this copy too; whichever reply comes first wakes the waiters.
                *since = now;
                Lookup::New
            }
            Some(Entry::InProgress { waiters, .. }) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Lookup::Wait(rx)
            }
            Some(Entry::Done(reply)) => Lookup::Replay(reply.clone()),
        }
    }

    /// The call completed with `reply`: wake retransmissions, keep the reply if `keep`.
    /// The reply is copied only if someone needs it (a waiter, or `keep`): READ replies
    /// of a megabyte pass through here on every call.
    pub fn finish(&self, key: Key, reply: &BytesMut, keep: bool) {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("drc lock");
        let waiters = match g.map.remove(&key) {
            Some(Entry::InProgress { waiters, .. }) => waiters,
            _ => Vec::new(),
        };
        if waiters.is_empty() && !keep {
            return;
        }
        let bytes = Bytes::copy_from_slice(reply);
        for w in waiters {
            let _ = w.send(bytes.clone());
        }
        if keep {
            g.map.insert(key, Entry::Done(bytes));
            g.done.push_back((key, now));
        }
        self.expire(&mut g, now);
    }

    /// The call got no reply (shutdown): forget it; waiters see their channel close.
    pub fn abandon(&self, key: Key) {
        let mut g = self.inner.lock().expect("drc lock");
        if let Some(Entry::InProgress { .. }) = g.map.get(&key) {
            g.map.remove(&key);
        }
    }

    fn expire(&self, g: &mut Inner, now: Instant) {
        while let Some(&(key, at)) = g.done.front() {
            if g.done.len() <= self.cap && now.duration_since(at) < self.ttl {
                break;
            }
            g.done.pop_front();
            if let Some(Entry::Done(_)) = g.map.get(&key) {
                g.map.remove(&key);
            }
        }
    }

    /// Entries held (in progress and completed), for tests and status.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("drc lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::msg::call_message;

    fn key(xid: u32, args: &[u8]) -> Key {
        let m = call_message(xid, 100003, 3, 12, args);
        let h = CallHeader::parse(&m).unwrap();
        Key::new("127.0.0.1".parse().unwrap(), &h, &m)
    }

    #[test]
    fn same_call_same_key_other_args_other_key() {
        assert_eq!(key(1, b"abcd"), key(1, b"abcd"));
        assert_ne!(key(1, b"abcd"), key(1, b"abce"));
        assert_ne!(key(1, b"abcd"), key(2, b"abcd"));
    }

    #[tokio::test]
    async fn retransmission_in_flight_waits_for_the_original() {
        let d = Drc::new(Duration::from_secs(60), 10);
        let k = key(1, b"abcd");
        assert!(matches!(d.begin(k), Lookup::New));
        let Lookup::Wait(rx) = d.begin(k) else {
            panic!()
        };
        d.finish(k, &BytesMut::from(&b"reply"[..]), false);
        assert_eq!(&rx.await.unwrap()[..], b"reply");
        assert!(d.is_empty(), "idempotent replies are not kept");
    }

    #[test]
    fn completed_non_idempotent_call_is_replayed_until_evicted() {
        let d = Drc::new(Duration::from_secs(60), 2);
        let k = key(1, b"x");
        assert!(matches!(d.begin(k), Lookup::New));
        d.finish(k, &BytesMut::from(&b"ok"[..]), true);
        let Lookup::Replay(r) = d.begin(k) else {
            panic!()
        };
        assert_eq!(&r[..], b"ok");
        for x in 2..5 {
            let k2 = key(x, b"x");
            assert!(matches!(d.begin(k2), Lookup::New));
            d.finish(k2, &BytesMut::from(&b"ok"[..]), true);
        }
        assert!(
            matches!(d.begin(k), Lookup::New),
            "oldest entry should be evicted"
        );
    }

    /// Regression: a call the server never answered absorbed every retransmission, so
    /// the client waited for ever.
    #[test]
    fn old_call_in_flight_is_forwarded_again() {
        let d = Drc::new(Duration::from_secs(60), 10);
        let k = key(1, b"x");
        assert!(matches!(d.begin(k), Lookup::New));
        if let Some(Entry::InProgress { since, .. }) = d.inner.lock().unwrap().map.get_mut(&k) {
            *since -= RESEND_AFTER;
        }
        assert!(
            matches!(d.begin(k), Lookup::New),
            "a stale call must be re-forwarded"
        );
        assert!(
            matches!(d.begin(k), Lookup::Wait(_)),
            "a fresh one is waited for"
        );
    }

    #[test]
    fn expired_entries_are_dropped() {
        let d = Drc::new(Duration::from_millis(0), 100);
        let k = key(1, b"x");
        d.begin(k);
        d.finish(k, &BytesMut::from(&b"ok"[..]), true);
        assert!(d.is_empty());
    }
}
