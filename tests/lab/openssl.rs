//! Real OpenSSL peers for the TLS protocol tests: `openssl s_server` as the TLS side of a lab
//! MX (see [`crate::lab::smtp::Behaviour::tls_handoff`]), with protocol versions rustls does not
//! have, and `openssl s_client -starttls smtp` as a submitting client.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Whether the `openssl` command is there (the tests that need it say so and pass when not).
pub fn available() -> bool {
    std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A running `openssl s_server`, killed when dropped.
pub struct SServer {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl SServer {
    /// `openssl s_server` on `addr` with the PEM files and extra arguments (e.g. `-tls1`,
    /// `-cipher DEFAULT:@SECLEVEL=0`). Its standard input stays open: at end of input
    /// s_server would stop.
    pub async fn start(addr: SocketAddr, cert: &Path, key: &Path, args: &[&str]) -> SServer {
        let child = Command::new("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(addr.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl s_server starts");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return SServer { addr, child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("openssl s_server did not listen on {addr}");
    }
}

/// What `openssl s_client -starttls smtp` saw: its whole output and whether it exited 0.
pub struct SClient {
    pub output: String,
    pub success: bool,
}

impl SClient {
    /// Connects to `addr` with `-starttls smtp` and `args` (e.g. `-tls1_2`), sends `input`
    /// (lines ending in LF; `-crlf` makes them CRLF) over the TLS session once it is up, and
    /// waits (at most 20 s) for the end.
    pub async fn run(addr: SocketAddr, args: &[&str], input: &str) -> SClient {
        use tokio::io::AsyncWriteExt;
        let mut child = Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(addr.to_string())
            .args(["-starttls", "smtp", "-crlf", "-ign_eof"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl s_client starts");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_string();
        tokio::spawn(async move {
            // After the handshake; a session that failed has closed by then.
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("openssl s_client ends")
            .expect("openssl s_client output");
        SClient {
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            success: out.status.success(),
        }
    }

    /// Whether a TLS session came up (s_client prints `Cipher is (NONE)` when it did not).
    pub fn established(&self) -> bool {
        self.cipher().is_some_and(|c| c != "(NONE)")
    }

    /// The `Protocol  : …` of s_client's session summary (also printed, as the version it
    /// tried, when the handshake failed: look at [`SClient::established`] first).
    pub fn protocol(&self) -> Option<&str> {
        self.output
            .lines()
            .find_map(|l| l.trim().strip_prefix("Protocol  :"))
            .map(str::trim)
    }

    /// The cipher of the `New, TLSv1.3, Cipher is …` line.
    pub fn cipher(&self) -> Option<&str> {
        self.output
            .lines()
            .find_map(|l| l.split_once(", Cipher is ").map(|(_, c)| c.trim()))
    }
}
