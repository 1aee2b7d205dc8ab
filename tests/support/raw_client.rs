//! Raw HTTP/1.1 clients for tests that must send bytes a well-behaved client
//! never would, and read exactly what came back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Overall bound on anything a raw client waits for; generous, never a speed claim.
pub const BOUND: Duration = Duration::from_secs(10);

/// What a raw client saw once the server closed its connection.
#[derive(Debug)]
pub struct Closed {
    /// Every byte received before the close.
    pub bytes: Vec<u8>,
    /// Whether the close was a reset rather than an orderly FIN.
    pub reset: bool,
}

impl Closed {
    /// The status of the first response received, if any.
    pub fn status(&self) -> Option<u16> {
        status_of(&self.bytes)
    }
}

/// Reads until the server closes the connection, which must happen within [`BOUND`].
pub async fn read_until_closed(stream: &mut TcpStream) -> Closed {
    let read_all = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => {
                    return Closed {
                        bytes,
                        reset: false,
                    };
                }
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(_) => return Closed { bytes, reset: true },
            }
        }
    };
    timeout(BOUND, read_all)
        .await
        .expect("the server closes the connection")
}

/// Reads one `Content-Length`-framed response from a keep-alive connection and
/// returns its status and body.
pub async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let read_one = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(whole) = whole_response_len(&bytes, false) {
                let end = find(&bytes, b"\r\n\r\n").expect("a head") + 4;
                let body = String::from_utf8_lossy(&bytes[end..whole]);
                return (status_of(&bytes).expect("a status line"), body.into_owned());
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "connection closed before a whole response: {bytes:?}"
            );
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    timeout(BOUND, read_one).await.expect("a response arrives")
}

/// The length of the response at the start of `bytes` (its head, then
/// `Content-Length` bytes of body, or none when it answers a HEAD:
/// `to_head`), once all of it has arrived.
pub fn whole_response_len(bytes: &[u8], to_head: bool) -> Option<usize> {
    let end = find(bytes, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("numeric content-length"));
    let whole = end + if to_head { 0 } else { length };
    (bytes.len() >= whole).then_some(whole)
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| bytes.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(line.get(..3)?).ok()?.parse().ok()
}

/// Connects, writes `request` while reading, and returns everything read
/// until the server closed the connection (or [`BOUND`] ran out): for a
/// request the server refuses before reading it all, so the write may fail.
pub async fn send_while_reading(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.split();
    let (_, received) = tokio::join!(
        async {
            let _ = writer.write_all(request).await;
        },
        async {
            let mut bytes = Vec::new();
            let _ = timeout(BOUND, reader.read_to_end(&mut bytes)).await;
            bytes
        }
    );
    received
}

/// Connects and writes `request` verbatim.
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    stream
}
