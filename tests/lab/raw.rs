//! A hostile "MX host": a TCP server on a lab address that plays a script of raw bytes, for
//! peers no well-behaved SMTP server imitates (replies one byte at a time, endless replies,
//! binary garbage, a TLS handshake that never ends).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Script {
    /// A greeting sent one byte every `ms` milliseconds, forever (`220-` lines).
    Trickle { ms: u64 },
    /// `220-` continuation lines as fast as the client reads them, never a last line.
    EndlessMultiline,
    /// `220 ` and then this many bytes without a line end, then silence.
    LongLine { bytes: usize },
    /// Bytes that are no SMTP at all, then silence.
    Garbage,
    /// A normal greeting and EHLO with STARTTLS; `220` to STARTTLS; then the ClientHello is
    /// read and never answered.
    StallTls,
}

pub struct RawServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    pub async fn start(addr: SocketAddr, script: Script) -> RawServer {
        let listener = TcpListener::bind(addr).await.expect("bind a raw server");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(play(stream, script));
            }
        });
        RawServer {
            addr,
            connections,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn play(mut s: TcpStream, script: Script) {
    let _ = match script {
        Script::Trickle { ms } => trickle(&mut s, ms).await,
        Script::EndlessMultiline => endless(&mut s).await,
        Script::LongLine { bytes } => long_line(&mut s, bytes).await,
        Script::Garbage => garbage(&mut s).await,
        Script::StallTls => stall_tls(&mut s).await,
    };
}

async fn trickle(s: &mut TcpStream, ms: u64) -> std::io::Result<()> {
    loop {
        for b in b"220-slowly, very slowly\r\n" {
            s.write_all(&[*b]).await?;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }
}

async fn endless(s: &mut TcpStream) -> std::io::Result<()> {
    let line = format!("220-{}\r\n", "x".repeat(1000));
    loop {
        s.write_all(line.as_bytes()).await?;
    }
}

async fn long_line(s: &mut TcpStream, bytes: usize) -> std::io::Result<()> {
    s.write_all(b"220 ").await?;
    let chunk = vec![b'a'; 65536];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await?;
        left -= n;
    }
    hold(s).await
}

async fn garbage(s: &mut TcpStream) -> std::io::Result<()> {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    s.write_all(&bytes).await?;
    hold(s).await
}

async fn stall_tls(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"220 stall.lab.test ESMTP\r\n").await?;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
        if text.starts_with("EHLO") {
            s.write_all(b"250-stall.lab.test\r\n250 STARTTLS\r\n")
                .await?;
        } else if text.starts_with("STARTTLS") {
            s.write_all(b"220 2.0.0 go ahead\r\n").await?;
            return hold(s).await; // reads the ClientHello, answers nothing
        } else {
            s.write_all(b"250 ok\r\n").await?;
        }
    }
}

/// Reads (and drops) whatever comes until the client goes away.
async fn hold(s: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}
