//! `mxguard check DOMAIN [--connect] [--json] --config FILE`, end to end in the lab: the real
//! binary, configured like the daemon (the lab's DNS with its signed root as the one trust
//! anchor, `dnssec = "validate"`, the lab CA, the lab's SMTP and HTTPS ports), reporting on
//! signed and unsigned lab domains with TLSA records and MTA-STS policies.

mod lab;

use lab::dane::{tlsa_for, DaneScene};
use lab::dns::Zone;
use lab::https::PolicyServer;
use lab::sts::policy;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What one run of the command line gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    #[track_caller]
    fn assert_contains(&self, expected: &[&str]) {
        assert_eq!(self.code, Some(0), "{self:?}");
        for e in expected {
            assert!(self.stdout.contains(e), "{e:?} missing:\n{self:?}");
        }
    }

    #[track_caller]
    fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "{self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{self:?}"))
    }
}

/// `mxguard check ARGS… --config CONFIG`. Asynchronous, so that the lab's servers (on this
/// test's runtime) keep answering while the command runs.
async fn check(config: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run the mxguard binary");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ mxguard check {}\n{run:?}", args.join(" "));
    run
}

/// A DANE scene with an MTA-STS policy host, and the configuration file a daemon of this lab
/// would have: in-process validation from the lab root's trust anchor.
struct Scene {
    dane: DaneScene,
    https: PolicyServer,
    config: PathBuf,
}

impl Scene {
    async fn new() -> Scene {
        let dane = DaneScene::new().await;
        let lab = dane.lab();
        let https = PolicyServer::start(lab, 80).await;
        let anchor = lab.dns.write_trust_anchor(lab.dir());
        let mut relay = lab.relay_config();
        relay.dnssec = "validate".into();
        let relay = relay.toml(&format!(
            "[dns]\ntrust_anchor_file = {:?}\n[mta_sts]\nhttps_port = {}\n",
            anchor.display().to_string(),
            https.port()
        ));
        let config = lab.dir().join("check.toml");
        std::fs::write(&config, relay.render()).expect("write the configuration");
        Scene {
            dane,
            https,
            config,
        }
    }

    /// Publishes `zone` with the MTA-STS policy `text` for `domain` announced under `id`.
    fn publish_with_policy(&self, zone: Zone, domain: &str, id: &str, text: &str) {
        self.https.publish(&self.dane.lab().ca, domain, text);
        self.dane.publish(self.https.announce(zone, domain, id));
    }

    async fn check(&self, args: &[&str]) -> Run {
        check(&self.config, args).await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 7672 §2.2 and RFC 8461 §2: a signed domain whose MX has usable TLSA records is under
/// DANE, and its MTA-STS policy is overridden; the readable report and the JSON say the same.
#[tokio::test]
async fn signed_domain_with_tlsa_is_dane_and_overrides_mta_sts() {
    let s = Scene::new().await;
    let issued = s
        .dane
        .lab()
        .ca
        .issue_with(&["mx10.dane.test"], Default::default());
    let data = tlsa_for(&issued, 1, 1);
    let zone = s.dane.zone("dane.test", &[(10, 10)]).signed();
    let zone = s.dane.with_tlsa(zone, "mx10.dane.test", (3, 1, 1), &data);
    s.publish_with_policy(
        zone,
        "dane.test",
        "7",
        &policy("enforce", &["mx10.dane.test"]),
    );
    let tlsa_owner = s.dane.tlsa_owner("mx10.dane.test");

    let run = s.check(&["dane.test"]).await;
    run.assert_contains(&[
        "MX RRset: secure (1 record)",
        "   10  mx10.dane.test",
        "MX host mx10.dane.test (preference 10)",
        &format!("addresses: {}", s.dane.lab().ip(10)),
        "address records: A secure (1 record)",
        &format!("TLSA {tlsa_owner}: secure (1 record)"),
        &format!("DANE-EE(3) SPKI(1) SHA2-256(1) {}  [usable]", hex(&data)),
        "effective policy: dane",
        "TXT _mta-sts.dane.test: id=7",
        "mode enforce, max_age 86400",
        "authorizes mx10.dane.test (mx: mx10.dane.test)",
        "Effective policy for dane.test: dane",
        "the MTA-STS policy (mode enforce, id 7) is overridden",
    ]);

    let json = s.check(&["dane.test", "--json"]).await.json();
    assert_eq!(json["domain"], "dane.test");
    assert_eq!(json["settings"]["dnssec"], "validate");
    assert_eq!(json["mx"]["kind"], "mx");
    assert_eq!(json["mx"]["dnssec"]["status"], "secure");
    assert_eq!(json["mx"]["hosts"][0]["name"], "mx10.dane.test");
    assert_eq!(json["mx"]["hosts"][0]["preference"], 10);
    let host = &json["hosts"][0];
    assert_eq!(host["address_dnssec"][0]["status"], "secure");
    assert_eq!(host["tlsa"]["name"], tlsa_owner.as_str());
    assert_eq!(host["tlsa"]["dnssec"]["status"], "secure");
    let record = &host["tlsa"]["records"][0];
    assert_eq!(
        (&record["usage"], &record["selector"], &record["matching"]),
        (&Value::from(3), &Value::from(1), &Value::from(1))
    );
    assert_eq!(record["data"], hex(&data).as_str());
    assert_eq!(record["usable"], true);
    assert_eq!(host["dane"]["state"], "authenticate");
    assert_eq!(host["policy"]["kind"], "dane");
    assert_eq!(host["sts_pattern"], "mx10.dane.test");
    assert_eq!(host["probes"], Value::Array(vec![]));
    assert_eq!(json["mta_sts"]["txt"]["status"], "record");
    assert_eq!(json["mta_sts"]["txt"]["id"], "7");
    assert_eq!(json["mta_sts"]["fetch"], "fetched");
    assert_eq!(json["mta_sts"]["policy"]["mode"], "enforce");
    assert_eq!(
        json["mta_sts"]["authorized"][0]["pattern"],
        "mx10.dane.test"
    );
    assert_eq!(json["policy"]["kind"], "dane");
    assert_eq!(json["policy"]["label"], "dane");
    let reason = json["policy"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("overridden"), "{reason}");
    assert_eq!(json["delivery_error"], Value::Null);
}

/// An unsigned (provably insecure) domain: no DANE, its MTA-STS testing policy decides.
#[tokio::test]
async fn unsigned_domain_with_mta_sts_testing() {
    let s = Scene::new().await;
    let zone = s.dane.zone("plain.test", &[(10, 10), (20, 11)]);
    s.publish_with_policy(
        zone,
        "plain.test",
        "1",
        &policy("testing", &["mx10.plain.test"]),
    );

    let run = s.check(&["plain.test"]).await;
    run.assert_contains(&[
        "MX RRset: insecure (2 records)",
        "   10  mx10.plain.test",
        "   20  mx11.plain.test",
        "address records: A insecure (1 record)",
        "DANE: not applicable (MX RRset not secure (insecure))",
        "effective policy: mta-sts testing",
        "mx11.plain.test matches no mx pattern (reported)",
        "does not authorize mx11.plain.test",
        "Effective policy for plain.test: mta-sts testing",
    ]);
    assert!(!run.stdout.contains("[usable]"), "{run:?}");

    let json = s.check(&["plain.test", "--json"]).await.json();
    assert_eq!(json["mx"]["dnssec"]["status"], "insecure");
    for host in json["hosts"].as_array().expect("hosts") {
        assert_eq!(host["dane"]["state"], "not_applicable", "{host}");
        assert_eq!(host["policy"]["kind"], "mta_sts_testing", "{host}");
        assert_eq!(host["tlsa"]["records"], Value::Array(vec![]), "{host}");
    }
    assert_eq!(json["mta_sts"]["policy"]["mode"], "testing");
    assert_eq!(json["policy"]["kind"], "mta_sts_testing");
}

/// `--connect`: the STARTTLS handshake with each MX address, the chain it presents, and the
/// DANE verdict on it — matched for a correct TLSA record, a mismatch (with the reason, and
/// delivery's refusal) for a wrong one.
#[tokio::test]
async fn connect_shows_the_chain_and_the_dane_verdict() {
    let s = Scene::new().await;
    let lab = s.dane.lab();
    let good = lab.ca.issue_with(&["mx10.good.test"], Default::default());
    let _good_mx = s.dane.tls_mx(10, &good).await;
    let zone = s.dane.zone("good.test", &[(10, 10)]).signed();
    s.dane.publish(
        s.dane
            .with_tlsa(zone, "mx10.good.test", (3, 1, 1), &tlsa_for(&good, 1, 1)),
    );

    let presented = lab.ca.issue_with(&["mx11.bad.test"], Default::default());
    let other = lab.ca.issue_with(&["mx11.bad.test"], Default::default());
    let _bad_mx = s.dane.tls_mx(11, &presented).await;
    let zone = s.dane.zone("bad.test", &[(10, 11)]).signed();
    s.dane.publish(
        s.dane
            .with_tlsa(zone, "mx11.bad.test", (3, 1, 1), &tlsa_for(&other, 1, 1)),
    );

    let run = s.check(&["good.test", "--connect"]).await;
    let addr = format!("{}:{}", lab.ip(10), lab.port());
    run.assert_contains(&[
        &format!("connect {addr}:"),
        "greeting: 220",
        "STARTTLS: offered; handshake ok: TLSv1.",
        "certificate chain:",
        "[0] subject CN=mx10.good.test",
        "names   DNS:mx10.good.test",
        "[1] subject CN=mxguard lab CA",
        &format!("TLSA 3 1 1 {}", hex(&tlsa_for(&good, 1, 1))),
        "PKIX: ok: valid for mx10.good.test",
        "DANE: ok: matched DANE-EE(3) SPKI(1) SHA2-256(1)",
        "under the policy: ok: would deliver: authenticated by DANE",
    ]);
    let json = s.check(&["good.test", "--connect", "--json"]).await.json();
    let probe = &json["hosts"][0]["probes"][0];
    assert_eq!(probe["address"], addr.as_str());
    assert_eq!(probe["connected"], true);
    assert_eq!(probe["starttls"], "offered");
    assert!(
        probe["extensions"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == "STARTTLS")),
        "{probe}"
    );
    assert!(probe["tls"]["version"]
        .as_str()
        .is_some_and(|v| v.starts_with("TLSv1.")));
    assert_eq!(probe["chain"][0]["san"][0], "DNS:mx10.good.test");
    assert_eq!(probe["pkix"]["ok"], true);
    assert_eq!(probe["dane"]["ok"], true);
    assert_eq!(probe["under_policy"]["ok"], true);

    let run = s.check(&["bad.test", "--connect"]).await;
    run.assert_contains(&[
        "handshake ok",
        "[0] subject CN=mx11.bad.test",
        "DANE: FAILED: no TLSA record matched the certificate chain",
        "under the policy: FAILED: 451 4.7.5 Server certificate not verified: DANE \
         authentication failed: no TLSA record matched the certificate chain",
    ]);
    let json = s.check(&["bad.test", "--connect", "--json"]).await.json();
    let probe = &json["hosts"][0]["probes"][0];
    assert_eq!(probe["dane"]["ok"], false);
    assert_eq!(
        probe["dane"]["detail"],
        "no TLSA record matched the certificate chain"
    );
    assert_eq!(probe["under_policy"]["ok"], false);
}

/// A domain that does not exist is a finding, not an error: exit status 0, delivery's own
/// text. A DOMAIN that is no domain name, or an unreadable configuration, is exit status 2.
#[tokio::test]
async fn a_nonexistent_domain_is_reported_and_bad_input_is_status_2() {
    let s = Scene::new().await;
    let run = s.check(&["nowhere.test"]).await;
    run.assert_contains(&[
        "MX RRset: secure (NXDOMAIN)",
        "nowhere.test does not exist (NXDOMAIN)",
        "delivery: 550 5.1.2 Host or domain name not found. Name service error for \
         name=nowhere.test type=MX: Host not found",
        "Effective policy for nowhere.test: no delivery",
    ]);
    assert!(!run.stdout.contains("MX host "), "{run:?}");
    let json = s.check(&["nowhere.test", "--json"]).await.json();
    assert_eq!(json["mx"]["kind"], "not_found");
    assert_eq!(json["hosts"], Value::Array(vec![]));
    assert_eq!(json["policy"]["kind"], "no_delivery");
    assert!(json["delivery_error"]
        .as_str()
        .is_some_and(|e| e.starts_with("550 5.1.2 ")));

    let bad = s.check(&["no..such"]).await;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("is not a domain name"), "{bad:?}");
    let missing = check(&s.dane.lab().dir().join("missing.toml"), &["dane.test"]).await;
    assert_eq!(missing.code, Some(2), "{missing:?}");
}
