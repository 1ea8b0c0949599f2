//! A TCP relay between a client and a server under test, on its own threads: counts
//! the bytes each way and may cap either direction's rate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP relay that counts the bytes each way and may cap the rate of each direction
/// (bytes per second; up = client→server), one link shared by all its connections.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl Relay {
    pub fn start(to: SocketAddr, up_rate: Option<u64>, down_rate: Option<u64>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u2, d2) = (up.clone(), down.clone());
        let (up_link, down_link) = (Link::new(up_rate), Link::new(down_rate));
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                let Ok(s) = TcpStream::connect(to) else {
                    continue;
                };
                let _ = (c.set_nodelay(true), s.set_nodelay(true));
                pipe(
                    c.try_clone().unwrap(),
                    s.try_clone().unwrap(),
                    u2.clone(),
                    up_link.clone(),
                );
                pipe(s, c, d2.clone(), down_link.clone());
            }
        });
        Relay { addr, up, down }
    }

    pub fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// One direction's rate cap, shared by the relay's connections.
#[derive(Clone)]
struct Link {
    rate: Option<u64>,
    /// When the link is free again; idle time earns no credit for a later burst.
    free_at: Arc<Mutex<Instant>>,
}

impl Link {
    fn new(rate: Option<u64>) -> Link {
        Link {
            rate,
            free_at: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Waits until `k` bytes have had their time on the link.
    fn pass(&self, k: usize) {
        let Some(r) = self.rate else { return };
        let due = {
            let mut f = self.free_at.lock().unwrap();
            *f = (*f).max(Instant::now()) + Duration::from_secs_f64(k as f64 / r as f64);
            *f
        };
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, n: Arc<AtomicU64>, link: Link) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let k = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
            link.pass(k);
            if to.write_all(&buf[..k]).is_err() {
                break;
            }
            n.fetch_add(k as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
