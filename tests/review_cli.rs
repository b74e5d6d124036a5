//! Acceptance review: the command line as an operator meets it (README "The two commands"):
//! `serve` without a configuration, a missing `--config` file, SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mxguard");

/// `serve --config MISSING` exits non-zero and says why once, naming the file.
#[test]
fn review_missing_config_file_is_one_clear_error() {
    for args in [
        &["serve", "--config", "/nonexistent/mxguard.toml"][..],
        &["check-config", "--config", "/nonexistent/mxguard.toml"][..],
    ] {
        let out = Command::new(BIN).args(args).output().expect("run mxguard");
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("/nonexistent/mxguard.toml"), "{err}");
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "the reason is said once: {err}"
        );
    }
}

/// README: "no configuration needed: listens on 127.0.0.1:10025, spool under ./var/". Then
/// SIGTERM stops it cleanly with exit status 0. Skipped when something else holds the port.
#[test]
fn review_serve_without_config_listens_on_10025_and_uses_var() {
    let addr: SocketAddr = "127.0.0.1:10025".parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        eprintln!("127.0.0.1:10025 is in use; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        // No DNS is needed for this test; keep start-up independent of resolv.conf.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mxguard serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            break s;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("mxguard serve exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "mxguard serve did not listen");
        std::thread::sleep(Duration::from_millis(100));
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
    stream.write_all(b"QUIT\r\n").unwrap();
    assert!(
        dir.path().join("var").join("spool").is_dir(),
        "the spool lives under ./var"
    );

    // SIGTERM: a graceful stop, exit status 0.
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc_kill(child.id() as i32, 15) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
