//! Helpers shared by the testkit's own tests.

#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP server that first writes `greeting`, then echoes everything back. Runs until the
/// test's runtime ends.
pub async fn echo_server(greeting: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if stream.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Read exactly `n` bytes as a string.
pub async fn read_n(stream: &mut TcpStream, n: usize) -> String {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.unwrap();
    String::from_utf8(buf).unwrap()
}

/// True when the peer has closed (read returns 0 or an error) within one second.
pub async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}
