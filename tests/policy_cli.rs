//! `mxguard policy show|refresh|forget DOMAIN`: the operator's view of the MTA-STS policy cache
//! (RFC 8461 §5.1), end to end in the lab. While the daemon runs the command goes through its
//! control socket (sled lets one process open the cache); with the daemon stopped the command
//! opens the cache itself. Either way the operator sees the same text.

mod lab;

use lab::dns::Zone;
use lab::https::PolicyServer;
use lab::relay::Relay;
use lab::Lab;
use std::path::{Path, PathBuf};

const DOMAIN: &str = "example.test";
const POLICY_ID: &str = "20261123T1000";
const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmx: *.backup.example.test\nmax_age: 86400\n";

/// What one run of the command line gave.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit ok={}\n--- stdout\n{}--- stderr\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// `mxguard policy ARGS… --config CONFIG`. Asynchronous, so that the lab's servers (on this
/// test's runtime) keep answering while the command runs.
async fn policy(config: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .arg("policy")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run the mxguard binary");
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ mxguard policy {}\n{run:?}", args.join(" "));
    run
}

/// A lab where `example.test` publishes an enforce policy on the lab policy host.
async fn lab_with_policy() -> (Lab, PolicyServer) {
    let lab = Lab::new().await;
    let server = PolicyServer::start(&lab, 80).await;
    server.publish(&lab.ca, DOMAIN, POLICY);
    lab.zone(
        server.announce(
            Zone::new(DOMAIN)
                .mx(10, "mx.example.test")
                .a("mx.example.test", lab.ip(3)),
            DOMAIN,
            POLICY_ID,
        ),
    );
    (lab, server)
}

/// The daemon of `lab`, fetching policies from `server`, and where an operator finds it.
struct Daemon {
    relay: Relay,
    /// The configuration file the command line is given.
    config: PathBuf,
    /// The daemon's control socket.
    socket: PathBuf,
}

impl Daemon {
    async fn start(lab: &Lab, server: &PolicyServer) -> Daemon {
        let config = lab
            .relay_config()
            .toml(&format!("[mta_sts]\nhttps_port = {}\n", server.port()));
        let relay = lab.start_relay(config).await;
        Daemon {
            config: relay.config_path().to_path_buf(),
            socket: relay.config.data_dir.join("control.sock"),
            relay,
        }
    }

    /// `mxguard policy ARGS…` with the daemon's configuration.
    async fn policy(&self, args: &[&str]) -> Run {
        policy(&self.config, args).await
    }
}

/// The refresh output names the policy: its id, mode and MX patterns.
fn assert_refreshed(run: &Run) {
    assert!(run.ok, "{run:?}");
    for expected in [
        format!("id={POLICY_ID}"),
        "mode=enforce".to_string(),
        "mx.example.test".to_string(),
        "*.backup.example.test".to_string(),
        "max_age=86400".to_string(),
    ] {
        assert!(
            run.stdout.contains(&expected),
            "{expected:?} missing:\n{run:?}"
        );
    }
}

fn assert_shows_policy(run: &Run) {
    assert!(run.ok, "{run:?}");
    assert!(run.stdout.contains(POLICY_ID), "{run:?}");
    assert!(run.stdout.contains("enforce"), "{run:?}");
}

fn assert_shows_nothing(run: &Run) {
    assert!(run.ok, "{run:?}");
    assert!(!run.stdout.contains(POLICY_ID), "{run:?}");
}

fn assert_forgot(run: &Run) {
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "forgot example.test\n");
}

#[tokio::test]
async fn policy_commands_go_through_the_running_daemon() {
    let (lab, server) = lab_with_policy().await;
    let daemon = Daemon::start(&lab, &server).await;
    let socket = &daemon.socket;
    assert!(socket.exists(), "no control socket at {}", socket.display());

    let refreshed = daemon.policy(&["refresh", DOMAIN]).await;
    assert_refreshed(&refreshed);
    assert!(server.requests("mta-sts.example.test") >= 1);
    // It was the daemon that ran it (the CLI could not have opened the locked cache anyway).
    daemon
        .relay
        .wait_for_log(
            |l| l.contains("control socket: policy refresh example.test"),
            lab::WAIT,
        )
        .await;

    assert_shows_policy(&daemon.policy(&["show", DOMAIN]).await);
    // Domains are case-insensitive and may be written fully qualified.
    assert_shows_policy(&daemon.policy(&["show", "Example.TEST."]).await);

    assert_forgot(&daemon.policy(&["forget", DOMAIN]).await);
    assert_shows_nothing(&daemon.policy(&["show", DOMAIN]).await);
    let again = daemon.policy(&["forget", DOMAIN]).await;
    assert!(again.ok, "{again:?}");
    assert_eq!(again.stdout, "nothing cached for example.test\n");

    let bad = daemon.policy(&["show", "no..such"]).await;
    assert!(!bad.ok, "{bad:?}");
    assert!(bad.stderr.contains("bad domain"), "{bad:?}");
}

#[tokio::test]
async fn policy_commands_open_the_cache_when_the_daemon_is_stopped() {
    let (lab, server) = lab_with_policy().await;
    let mut daemon = Daemon::start(&lab, &server).await;
    daemon.relay.stop().await;
    let socket = &daemon.socket;
    assert!(!socket.exists(), "the daemon left {}", socket.display());

    let refreshed = daemon.policy(&["refresh", DOMAIN]).await;
    assert_refreshed(&refreshed);
    assert_eq!(server.requests("mta-sts.example.test"), 1);
    assert_shows_policy(&daemon.policy(&["show", DOMAIN]).await);

    // What the command line stored, the daemon finds after its start.
    daemon.relay.start_again().await;
    assert_shows_policy(&daemon.policy(&["show", DOMAIN]).await);
    daemon.relay.stop().await;

    assert_forgot(&daemon.policy(&["forget", DOMAIN]).await);
    assert_shows_nothing(&daemon.policy(&["show", DOMAIN]).await);
    let again = daemon.policy(&["forget", DOMAIN]).await;
    assert_eq!(
        again.stdout, "nothing cached for example.test\n",
        "{again:?}"
    );
}

#[tokio::test]
async fn a_stale_socket_is_no_obstacle() {
    // A daemon killed with SIGKILL leaves its socket file behind: the command line falls back
    // to the cache, and the next daemon replaces the file.
    let (lab, server) = lab_with_policy().await;
    let mut daemon = Daemon::start(&lab, &server).await;
    daemon.relay.kill();
    assert!(daemon.socket.exists());

    assert_refreshed(&daemon.policy(&["refresh", DOMAIN]).await);

    daemon.relay.start_again().await;
    assert_shows_policy(&daemon.policy(&["show", DOMAIN]).await);
}

#[tokio::test]
async fn a_domain_without_a_policy_says_so() {
    let (lab, server) = lab_with_policy().await;
    lab.zone(Zone::new("plain.test").mx(10, "mx.plain.test"));
    let daemon = Daemon::start(&lab, &server).await;
    let run = daemon.policy(&["refresh", "plain.test"]).await;
    assert!(run.ok, "{run:?}");
    assert!(
        run.stdout.contains("plain.test: no MTA-STS policy"),
        "{run:?}"
    );
}
