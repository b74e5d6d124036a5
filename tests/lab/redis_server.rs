//! A real `redis-server` (Debian's package) for fleet tests: on a loopback port of its own,
//! with its own directory, no persistence; killed and started again on the same port to play
//! an outage. Where the program is missing or cannot start, [`RedisServer::start`] says so
//! once and gives `None`, and the test returns early (skipped, with the message).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// A fresh server, or `None` (with a message on stderr) where none can run.
    pub fn start(dir: &Path) -> Option<RedisServer> {
        let dir = dir.join("redis");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("SKIPPED: cannot make a directory for redis-server: {e}");
            return None;
        }
        let port = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l.local_addr().map(|a| a.port()).unwrap_or(0),
            Err(e) => {
                eprintln!("SKIPPED: no loopback port for redis-server: {e}");
                return None;
            }
        };
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(e) => {
                eprintln!(
                    "SKIPPED: redis-server cannot run here ({e}); install Debian's redis-server"
                );
                None
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it at once (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (nothing was saved).
    pub fn start_again(&mut self) {
        self.kill();
        self.spawn().expect("redis-server starts again");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err("it did not answer PING within 10 s".into())
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// A command's reply, through redis-rs.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the lab's Redis");
        cmd.query_async(&mut conn).await.expect("a Redis reply")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
