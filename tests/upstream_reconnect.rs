//! The upstream link against a real TCP peer that drops the connection in the middle of
//! a call: the link reconnects from the same local port (so a server's duplicate request
//! cache, keyed on address and port as Linux nfsd's is, sees the re-send as the same
//! client), re-sends the call with the same xid, and the caller gets the reply with its
//! own xid back.

use std::time::Duration;

use bytes::BytesMut;
use gridvfs::config::{Endpoint, UpstreamConfig};
use gridvfs::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn read_record(s: &mut TcpStream) -> Vec<u8> {
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).await.unwrap();
    let mut body = vec![0u8; (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn dropped_connection_is_reopened_from_the_same_port_and_the_call_resent() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = Endpoint::Tcp(l.local_addr().unwrap().to_string());
    let cfg = UpstreamConfig {
        nfs: ep.clone(),
        mount: ep.clone(),
        ssh: None,
        connections: 1,
        max_in_flight: 8,
        connect_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        resend_limit: 6,
    };
    let up = Upstream::start("nfs", gridvfs::transport::Dialer::Tcp(ep), &cfg, 1 << 20);
    let mut call = BytesMut::new();
    call.extend_from_slice(&7u32.to_be_bytes()); // the client's xid
    call.extend_from_slice(b"call body, not parsed by the link");
    let expected_tail = call[4..].to_vec();
    let caller = tokio::spawn({
        let up = up.clone();
        async move { up.call(call).await.unwrap() }
    });

    let (mut first, peer1) = l.accept().await.unwrap();
    let got = read_record(&mut first).await;
    assert_eq!(&got[4..], &expected_tail[..]);
    let proxy_xid = got[..4].to_vec();
    drop(first); // the next hop goes away without answering

    let (mut second, peer2) = tokio::time::timeout(Duration::from_secs(5), l.accept())
        .await
        .expect("the link did not reconnect")
        .unwrap();
    assert_eq!(
        peer2.port(),
        peer1.port(),
        "reconnected from another local port"
    );
    let again = read_record(&mut second).await;
    assert_eq!(again[..4], proxy_xid[..], "the re-send must keep its xid");
    assert_eq!(&again[4..], &expected_tail[..]);

    let mut reply = proxy_xid.clone();
    reply.extend_from_slice(b"the reply");
    let mut rec = ((reply.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(&reply);
    second.write_all(&rec).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), caller)
        .await
        .expect("no reply")
        .unwrap();
    assert_eq!(
        &answer[..4],
        &7u32.to_be_bytes(),
        "the client's xid was not restored"
    );
    assert_eq!(&answer[4..], b"the reply");
    assert_eq!(
        up.stats.resent.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
