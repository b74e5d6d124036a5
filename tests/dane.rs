//! Delivery under DANE (RFC 7672), end to end: the real relay binary validating DNSSEC from the
//! lab root's trust anchor (`[dns] dnssec = "validate"`), signed lab zones with TLSA records, and
//! MX hosts whose certificates match them (or not). Each test is one rule, checked on what the
//! MX hosts received (or did not), on the SNI they saw, and on the relay's delivery log line.
//!
//! The DANE-TA(2) tests use a private CA that the relay does not trust (`LabCa::new()`, not the
//! lab CA of `delivery.extra_ca_files`), so only the TLSA record can authenticate its leaves;
//! its intermediate issues the leaves, and servers send leaf + intermediate.

mod lab;

use lab::ca::{CertOptions, Issued, LabCa};
use lab::dane::{
    a_rdata, dane_ee, dane_ta, mx_rdata, tlsa_for, tlsa_for_ca, tlsa_rdata, DaneScene, Params,
};
use lab::dns::Zone;
use lab::https::PolicyServer;
use lab::relay::{
    assert_facts, assert_not_verified, assert_relayed_by, shipped_status_filter, DeliveryLine,
    Relay,
};
use lab::smtp::{assert_nothing_sent, mail_commands, ReceivedMessage, SmtpServer};
use lab::sts::policy;
use lab::WAIT;

/// The usual recipient, at the signed `dane.test`.
const BOB: &str = "bob@dane.test";
/// The MX host of `dane.test` in most tests (lab host 10).
const MX10: &str = "mx10.dane.test";

/// `dane.test`, signed, MX host [`MX10`] with `records`.
fn publish_dane_test(s: &DaneScene, records: &[(Params, Vec<u8>)]) {
    s.publish_signed("dane.test", 10, records);
}

/// Adds to `zone` a DANE-EE(3) record for MX host `host` matching `issued` (see [`dane_ee`]).
fn with_dane_ee(s: &DaneScene, zone: Zone, host: &str, issued: &Issued) -> Zone {
    let (params, data) = dane_ee(issued);
    s.with_tlsa(zone, host, params, &data)
}

/// A private CA (unknown to the relay) and its intermediate, valid as `options` say.
fn private_intermediate(options: CertOptions) -> LabCa {
    LabCa::new().intermediate(options)
}

/// A good leaf for `names` from `ca`.
fn leaf(ca: &LabCa, names: &[&str]) -> Issued {
    ca.issue_with(names, CertOptions::default())
}

/// `[delivery] status_filter` set to the shipped deploy/status_filter.
fn with_status_filter() -> String {
    let filter = shipped_status_filter();
    format!(
        "[delivery]\nstatus_filter = {:?}\n",
        filter.to_string_lossy()
    )
}

fn sni(m: &ReceivedMessage) -> Option<&str> {
    m.tls.as_ref().and_then(|t| t.sni.as_deref())
}

/// The delivery line says sent under DANE (`tls=verified, policy=dane, dsn=2.0.0`); returns
/// the message `mx` received.
async fn assert_sent_under_dane(d: &DeliveryLine, mx: &SmtpServer) -> ReceivedMessage {
    assert_facts(d, "verified", "dane", "2.0.0");
    mx.next_message(WAIT).await
}

/// The same, and the relay sent `sni` as SNI (the TLSA base domain).
async fn assert_sent_under_dane_with_sni(d: &DeliveryLine, mx: &SmtpServer, sni_name: &str) {
    let m = assert_sent_under_dane(d, mx).await;
    assert_eq!(sni(&m), Some(sni_name), "SNI is the TLSA base domain");
}

/// The reply for a host skipped because its TLSA records could not be had (DESIGN.md: 4.7.0,
/// Postfix's wording, never 4.7.5).
fn tlsa_lookup_error(s: &DaneScene, host: &str) -> String {
    format!("451 4.7.0 TLSA lookup error for {host}:{}", s.lab().port())
}

/// Deferred because the TLSA records of `host` could not be had: 4.7.0 in Postfix's words.
#[track_caller]
fn assert_tlsa_lookup_error(s: &DaneScene, d: &DeliveryLine, host: &str) {
    assert_eq!(d.reply, tlsa_lookup_error(s, host), "{}", d.line);
    assert_facts(d, "none", "dane", "4.7.0");
}

/// Deferred because [`MX10`] offered no STARTTLS though DANE makes TLS mandatory: 4.7.4 in
/// Postfix's words.
#[track_caller]
fn assert_starttls_not_offered(s: &DaneScene, d: &DeliveryLine) {
    assert_eq!(d.reply, s.lab().not_offered("451 4.7.4", MX10, 10));
    assert_facts(d, "none", "dane", "4.7.4");
}

/// Waits for a relay log line containing every one of `parts`.
async fn wait_for_log_with(relay: &Relay, parts: &[&str]) -> String {
    relay
        .wait_for_log(|l| parts.iter().all(|p| l.contains(p)), WAIT)
        .await
}

// ---------------------------------------------------------------------------------------------
// DANE-EE(3)

/// RFC 7672 §3.1.1: DANE-EE(3) matches the leaf's key; its names and dates do not matter, so
/// an expired self-signed certificate for another name still authenticates the host.
#[tokio::test]
async fn dane_ee_ignores_names_and_dates() {
    let s = DaneScene::new().await;
    let issued = s.lab().ca.issue_with(
        &["somewhere-else.invalid"],
        CertOptions {
            self_signed: true,
            validity: lab::ca::Validity::Expired,
            ..CertOptions::default()
        },
    );
    let mx = s.tls_mx(10, &issued).await;
    publish_dane_test(&s, &[dane_ee(&issued)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ee", "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, MX10).await;
    // The operator sees every answer the DANE path used, at the default level.
    wait_for_log_with(
        &relay,
        &["MX RRset secure; MX host", "DANE 1 usable TLSA record"],
    )
    .await;
}

/// The same delivery with the relay anchored at the root's DS record (`trust_anchor_file` in
/// the form of the IANA root anchor): the key is fetched and matched, then DANE works alike.
#[tokio::test]
async fn a_ds_trust_anchor_validates_like_a_key() {
    let s = DaneScene::new().await;
    let issued = s.lab().ca.issue_with(&[MX10], CertOptions::default());
    let mx = s.tls_mx(10, &issued).await;
    publish_dane_test(&s, &[dane_ee(&issued)]);
    let relay = s.relay_with_ds_anchor("").await;

    let d = s.send(&relay, BOB, "ds anchor", "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, MX10).await;
}

/// RFC 7672 §3.1.1: a DANE-EE(3) record that matches nothing: the host is not authenticated,
/// nothing is sent, the recipient is deferred with 4.7.5 "Server certificate not verified".
#[tokio::test]
async fn dane_ee_mismatch_defers() {
    let s = DaneScene::new().await;
    let issued = s.lab().ca.issue_with(&[MX10], CertOptions::default());
    let other = s.lab().ca.issue_with(&[MX10], CertOptions::default());
    let mx = s.tls_mx(10, &issued).await;
    publish_dane_test(&s, &[dane_ee(&other)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "mismatch", "deferred").await;
    assert_not_verified(&d, "dane", ": DANE");
    assert_nothing_sent(&mx);
}

// ---------------------------------------------------------------------------------------------
// DANE-TA(2)

/// RFC 7672 §3.1.2: DANE-TA(2) naming a private intermediate CA: the leaf chains to it, is
/// in date and carries the MX host name, so the host is authenticated although no CA the relay
/// knows issued anything here.
#[tokio::test]
async fn dane_ta_intermediate_authenticates_a_leaf_for_the_mx_name() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let mx = s.tls_mx(10, &leaf(&sub, &[MX10])).await;
    publish_dane_test(&s, &[dane_ta(&sub)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ta", "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, MX10).await;
    wait_for_log_with(
        &relay,
        &["matched DANE-TA(2) Cert(0) SHA2-256(1)", "depth 1"],
    )
    .await;
}

/// RFC 7671 §5.2.2, §5.2.3: the root can be the trust anchor too: by its certificate when the
/// server sends it, or by its full public key (2 1 0) when the server leaves it out; and a
/// full-key anchor need not be sent at all, even when it is the leaf's own issuer.
#[tokio::test]
async fn dane_ta_anchor_in_or_out_of_the_chain() {
    let s = DaneScene::new().await;
    let root = LabCa::new();
    let sub = root.intermediate(CertOptions::default());
    // Root certificate digest; the server sends leaf + intermediate + root.
    let host_a = "mx10.ta-root.test";
    let mut issued = leaf(&sub, &[host_a]);
    issued.chain_pem.push_str(&root.cert_pem());
    let mx_a = s.tls_mx(10, &issued).await;
    s.publish_signed("ta-root.test", 10, &[dane_ta(&root)]);
    // Root key in full; the server sends leaf + intermediate only.
    let host_b = "mx11.ta-key.test";
    let mx_b = s.tls_mx(11, &leaf(&sub, &[host_b])).await;
    s.publish_signed("ta-key.test", 11, &[((2, 1, 0), tlsa_for_ca(&root, 1, 0))]);
    // Intermediate key in full; the server sends its leaf alone.
    let host_c = "mx12.ta-leaf-only.test";
    let mut issued = leaf(&sub, &[host_c]);
    issued.chain_pem = issued.cert_pem.clone();
    let mx_c = s.tls_mx(12, &issued).await;
    s.publish_signed(
        "ta-leaf-only.test",
        12,
        &[((2, 1, 0), tlsa_for_ca(&sub, 1, 0))],
    );
    let relay = s.relay("").await;

    for (rcpt, mx, host) in [
        ("bob@ta-root.test", &mx_a, host_a),
        ("bob@ta-key.test", &mx_b, host_b),
        ("bob@ta-leaf-only.test", &mx_c, host_c),
    ] {
        let d = s.send(&relay, rcpt, "ta root", "sent").await;
        assert_sent_under_dane_with_sni(&d, mx, host).await;
    }
}

/// RFC 7672 §3.2.2: under DANE-TA(2) the leaf must carry the MX host name: a leaf for another
/// name is not authenticated, however well it chains.
#[tokio::test]
async fn dane_ta_leaf_for_another_name_defers() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let mx = s.tls_mx(10, &leaf(&sub, &["mx10.elsewhere.test"])).await;
    publish_dane_test(&s, &[dane_ta(&sub)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ta wrong name", "deferred").await;
    assert_not_verified(&d, "dane", ": ");
    assert!(
        d.reply.contains(MX10),
        "the reply names the name expected: {}",
        d.line
    );
    assert_nothing_sent(&mx);
}

/// RFC 7672 §3.1.2: a DANE-TA(2) record for a CA that has nothing to do with the server's
/// chain matches nothing: 4.7.5, nothing sent.
#[tokio::test]
async fn dane_ta_unrelated_ca_defers() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let stranger = private_intermediate(CertOptions::default());
    let mx = s.tls_mx(10, &leaf(&sub, &[MX10])).await;
    publish_dane_test(
        &s,
        &[
            dane_ta(&stranger),
            ((2, 1, 1), tlsa_for_ca(&LabCa::new(), 1, 1)),
        ],
    );
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ta unrelated", "deferred").await;
    assert_not_verified(&d, "dane", ": DANE");
    assert_nothing_sent(&mx);
}

/// RFC 7672 §3.1.2: under DANE-TA(2) dates count: an expired intermediate (the trust anchor
/// itself) does not authenticate the leaf it issued.
#[tokio::test]
async fn dane_ta_expired_intermediate_defers() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::expired());
    let mx = s.tls_mx(10, &leaf(&sub, &[MX10])).await;
    publish_dane_test(&s, &[dane_ta(&sub)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ta expired", "deferred").await;
    assert_not_verified(&d, "dane", ": ");
    assert!(
        d.reply.contains("expired"),
        "the reply says why: {}",
        d.line
    );
    assert_nothing_sent(&mx);
}

/// RFC 7672 §3.1.2: under DANE-TA(2) the leaf's own dates count too.
#[tokio::test]
async fn dane_ta_expired_leaf_defers() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let mx = s
        .tls_mx(10, &sub.issue_with(&[MX10], CertOptions::expired()))
        .await;
    publish_dane_test(&s, &[dane_ta(&sub)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ta expired leaf", "deferred").await;
    assert_facts(&d, "none", "dane", "4.7.5");
    assert!(d.reply.contains("expired"), "{}", d.line);
    assert_nothing_sent(&mx);
}

/// RFC 7672 §3.2.3: under DANE-TA(2) a wildcard `*.dane.test` stands for one whole leftmost
/// label, so it covers the MX host name.
#[tokio::test]
async fn dane_ta_wildcard_leaf_authenticates() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let mx = s.tls_mx(10, &leaf(&sub, &["*.dane.test"])).await;
    publish_dane_test(&s, &[((2, 1, 1), tlsa_for_ca(&sub, 1, 1))]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ta wildcard", "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, MX10).await;
}

/// RFC 7672 §3.2.3: a DANE-TA(2) leaf without any DNS subjectAltName is matched by its
/// subject common name.
#[tokio::test]
async fn dane_ta_leaf_with_only_a_common_name_authenticates() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let options = CertOptions {
        common_name_only: true,
        ..CertOptions::default()
    };
    let mx = s.tls_mx(10, &sub.issue_with(&[MX10], options)).await;
    publish_dane_test(&s, &[dane_ta(&sub)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "ta common name", "sent").await;
    assert_sent_under_dane(&d, &mx).await;
}

// ---------------------------------------------------------------------------------------------
// Selectors and matching types

/// RFC 6698 §2.1.2, §2.1.3: selector 0 (certificate) and 1 (SPKI), matching type 0 (full),
/// 1 (SHA2-256) and 2 (SHA2-512), under both DANE usages: each combination with the right
/// data authenticates the host. One domain per combination, one relay.
#[tokio::test]
async fn every_selector_and_matching_type_authenticates() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let mut cases = Vec::new();
    let mut n = 10;
    for usage in [3u8, 2] {
        for selector in [0u8, 1] {
            for matching in [0u8, 1, 2] {
                let domain = format!("u{usage}-s{selector}-m{matching}.test");
                let host = format!("mx{n}.{domain}");
                let issued = leaf(&sub, &[&host]);
                let data = match usage {
                    3 => tlsa_for(&issued, selector, matching),
                    _ => tlsa_for_ca(&sub, selector, matching),
                };
                let mx = s.tls_mx(n, &issued).await;
                s.publish_signed(&domain, n, &[((usage, selector, matching), data)]);
                cases.push((format!("bob@{domain}"), host, mx));
                n += 1;
            }
        }
    }
    let relay = s.relay("").await;

    for (rcpt, _, _) in &cases {
        relay.submit(&s.mail(rcpt, rcpt)).await;
    }
    for (rcpt, host, mx) in &cases {
        let d = relay.delivery(rcpt, "sent").await;
        assert_sent_under_dane_with_sni(&d, mx, host).await;
    }
}

/// RFC 6698 §2.1.2: the selector says what the data is of: the certificate's digest published
/// as selector 1 (SPKI) matches nothing, for DANE-EE(3) as for DANE-TA(2).
#[tokio::test]
async fn certificate_data_under_the_spki_selector_defers() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let ee_host = "mx10.ee-selector.test";
    let ee = leaf(&sub, &[ee_host]);
    let mx_ee = s.tls_mx(10, &ee).await;
    s.publish_signed("ee-selector.test", 10, &[((3, 1, 1), tlsa_for(&ee, 0, 1))]);
    let ta_host = "mx11.ta-selector.test";
    let mx_ta = s.tls_mx(11, &leaf(&sub, &[ta_host])).await;
    let ta_data = tlsa_for_ca(&sub, 0, 1);
    s.publish_signed("ta-selector.test", 11, &[((2, 1, 1), ta_data)]);
    let relay = s.relay("").await;

    for (rcpt, mx) in [
        ("bob@ee-selector.test", &mx_ee),
        ("bob@ta-selector.test", &mx_ta),
    ] {
        let d = s.send(&relay, rcpt, "selector", "deferred").await;
        assert_not_verified(&d, "dane", ": DANE");
        assert_nothing_sent(mx);
    }
}

// ---------------------------------------------------------------------------------------------
// TLS mandatory

/// RFC 7672 §2.2, §3.1.3: a secure TLSA RRset with only PKIX-TA(0)/PKIX-EE(1) records (and a
/// DANE-EE(3) record whose digest has the wrong length) has nothing usable, though the PKIX
/// records match: TLS is still mandatory, but unauthenticated (tls=unverified, policy=dane).
/// The same host without STARTTLS is deferred (4.7.4), with nothing sent in plaintext.
#[tokio::test]
async fn pkix_usages_only_mean_encryption_without_authentication() {
    let s = DaneScene::new().await;
    let root = LabCa::new();
    let issued = leaf(&root, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    publish_dane_test(
        &s,
        &[
            ((0, 0, 1), tlsa_for_ca(&root, 0, 1)),
            ((1, 1, 1), tlsa_for(&issued, 1, 1)),
            ((3, 1, 1), tlsa_for(&issued, 1, 1)[..31].to_vec()),
        ],
    );
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "pkix only", "sent").await;
    assert_facts(&d, "unverified", "dane", "2.0.0");
    let m = mx.next_message(WAIT).await;
    assert!(m.tls.is_some(), "delivered over TLS");

    mx.set_behaviour(lab::smtp::Behaviour::plain());
    let before = mail_commands(&mx);
    let d = s
        .send(&relay, BOB, "pkix only, no starttls", "deferred")
        .await;
    assert_starttls_not_offered(&s, &d);
    assert_eq!(mx.messages().len(), 1, "nothing more arrives");
    assert_eq!(
        mail_commands(&mx),
        before,
        "no plaintext transaction: {:#?}",
        mx.transcript()
    );
}

/// RFC 7672 §2.2: usable TLSA records make STARTTLS mandatory: a host that does not offer it
/// is deferred with Postfix's 4.7.4 wording, and nothing is sent in plaintext.
#[tokio::test]
async fn no_starttls_with_usable_tlsa_defers() {
    let s = DaneScene::new().await;
    let mx = s.plain_mx(10).await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    publish_dane_test(&s, &[dane_ee(&issued)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "no starttls", "deferred").await;
    assert_starttls_not_offered(&s, &d);
    assert_nothing_sent(&mx);
}

// ---------------------------------------------------------------------------------------------
// When DANE does not apply

/// RFC 7672 §2.2: DANE needs a secure MX RRset. In an unsigned (provably insecure) zone a TLSA
/// record means nothing: delivery is opportunistic (policy=none), though it does not match.
#[tokio::test]
async fn insecure_zone_means_no_dane() {
    let s = DaneScene::new().await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let other = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    let zone = s.zone("dane.test", &[(10, 10)]);
    s.publish(with_dane_ee(&s, zone, MX10, &other));
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "insecure", "sent").await;
    assert_facts(&d, "unverified", "none", "2.0.0");
    assert!(mx.next_message(WAIT).await.tls.is_some());
}

/// RFC 7672 §2.2: a secure denial of the TLSA RRset (signed zone, no TLSA) means no DANE for
/// that host: delivery is opportunistic, in plaintext to a host without STARTTLS.
#[tokio::test]
async fn secure_nodata_tlsa_means_no_dane() {
    let s = DaneScene::new().await;
    let mx = s.plain_mx(10).await;
    publish_dane_test(&s, &[]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "nodata", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    assert!(mx.next_message(WAIT).await.tls.is_none());
}

/// RFC 7672 §2.2.2: the MX host's own address records must be secure too: a host in an
/// unsigned zone under a signed MX RRset has no DANE, whatever TLSA record it publishes.
#[tokio::test]
async fn mx_host_in_an_unsigned_zone_means_no_dane() {
    let s = DaneScene::new().await;
    let host = "mx.provider.test";
    let issued = leaf(&s.lab().ca, &[host]);
    let other = leaf(&s.lab().ca, &[host]);
    let mx = s.tls_mx(10, &issued).await;
    s.publish(Zone::new("dane.test").mx(10, host).signed());
    let provider = Zone::new("provider.test").a(host, s.lab().ip(10));
    s.publish(with_dane_ee(&s, provider, host, &other));
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "unsigned host", "sent").await;
    assert_facts(&d, "unverified", "none", "2.0.0");
    mx.next_message(WAIT).await;
}

// ---------------------------------------------------------------------------------------------
// Lookup failures: deferred, never downgraded, never 4.7.5

/// RFC 7672 §2.1.1: a bogus TLSA RRset (here forged to match the server's certificate) is a
/// lookup error: the host is unusable for now, the recipient deferred with 4.7.0 "TLSA lookup
/// error", nothing sent; neither accepted nor treated as absent.
#[tokio::test]
async fn bogus_tlsa_defers() {
    let s = DaneScene::new().await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let published = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    let zone = s.zone("dane.test", &[(10, 10)]).signed();
    let zone = with_dane_ee(&s, zone, MX10, &published);
    let owner = s.tlsa_owner(MX10);
    s.publish(zone.tamper(&owner, tlsa_rdata(3, 1, 1, &tlsa_for(&issued, 1, 1))));
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "bogus tlsa", "deferred").await;
    assert_tlsa_lookup_error(&s, &d, MX10);
    assert_eq!(mx.connections(), 0, "the host is not tried");
    wait_for_log_with(&relay, &["skipping MX host mx10.dane.test", "bogus"]).await;
}

/// RFC 7672 §2.2.2: the MX host's address records are on the DANE path too: a forged A record
/// (pointing at an attacker) makes the host unusable, never DANE-free.
#[tokio::test]
async fn bogus_address_record_defers() {
    let s = DaneScene::new().await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    let attacker = s.plain_mx(66).await;
    let zone = s.zone("dane.test", &[(10, 10)]).signed();
    let zone = with_dane_ee(&s, zone, MX10, &issued);
    s.publish(zone.tamper(MX10, a_rdata(s.lab().ip(66))));
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "bogus a", "deferred").await;
    assert_tlsa_lookup_error(&s, &d, MX10);
    assert_eq!(attacker.connections(), 0, "the forged address is not used");
    assert_eq!(mx.connections(), 0);
    wait_for_log_with(&relay, &["skipping MX host mx10.dane.test", "bogus"]).await;
}

/// RFC 7672 §2.2.1: a bogus MX RRset defers the whole domain (4.7.0 "DNSSEC lookup error"):
/// the forged MX host gets nothing, and no host is tried without DANE.
#[tokio::test]
async fn bogus_mx_rrset_defers_the_domain() {
    let s = DaneScene::new().await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    let attacker = s.plain_mx(66).await;
    let zone = s
        .zone("dane.test", &[(10, 10)])
        .a("mx66.dane.test", s.lab().ip(66))
        .signed();
    let zone = with_dane_ee(&s, zone, MX10, &issued);
    s.publish(zone.tamper("dane.test", mx_rdata(10, "mx66.dane.test")));
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "bogus mx", "deferred").await;
    assert!(
        d.reply
            .starts_with("451 4.7.0 DNSSEC lookup error for dane.test MX"),
        "{}",
        d.line
    );
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some("4.7.0"), "{}", d.line);
    assert_eq!(attacker.connections(), 0, "the forged MX host is not used");
    assert_eq!(mx.connections(), 0);
    wait_for_log_with(&relay, &["dane.test", "MX", "bogus"]).await;
}

/// RFC 7672 §2.1.1: a TLSA lookup that fails (SERVFAIL) makes the host unusable for now:
/// deferred with 4.7.0, not delivered without DANE; delivered under DANE once DNS recovers.
#[tokio::test]
async fn tlsa_servfail_defers_until_dns_recovers() {
    let s = DaneScene::new().await;
    let mx = s.dane_ee_domain("dane.test", 10).await;
    s.lab().dns.servfail(&s.tlsa_owner(MX10));
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "servfail", "deferred").await;
    assert_tlsa_lookup_error(&s, &d, MX10);
    assert_eq!(mx.connections(), 0, "the host is not tried");

    // "For now": once the lookup works again, the retry delivers under DANE.
    s.lab().dns.heal(&s.tlsa_owner(MX10));
    let d = relay.delivery(BOB, "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, MX10).await;
}

/// RFC 7672 §2.1.1, §2.2: hosts are judged one by one: the preferred MX host, whose TLSA
/// lookup fails, is skipped (not tried with less security), and the backup host, with
/// matching TLSA records, takes the mail.
#[tokio::test]
async fn a_host_with_a_failed_tlsa_lookup_is_skipped_for_the_next() {
    let s = DaneScene::new().await;
    let mx20_name = "mx20.dane.test";
    let first = leaf(&s.lab().ca, &[MX10]);
    let second = leaf(&s.lab().ca, &[mx20_name]);
    let mx10 = s.tls_mx(10, &first).await;
    let mx20 = s.tls_mx(20, &second).await;
    s.publish_signed_hosts(
        "dane.test",
        &[(10, 10, dane_ee(&first)), (20, 20, dane_ee(&second))],
    );
    s.lab().dns.servfail(&s.tlsa_owner(MX10));
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "mixed", "sent").await;
    assert_relayed_by(&d, "mx20.dane.test");
    assert_sent_under_dane_with_sni(&d, &mx20, mx20_name).await;
    assert_eq!(mx10.connections(), 0, "the preferred host is skipped");
    wait_for_log_with(&relay, &["skipping MX host mx10.dane.test"]).await;
}

// ---------------------------------------------------------------------------------------------
// Hosts, records and names

/// RFC 5321 §5.1, RFC 7672 §2.2.1: hosts are tried in order, each judged by its own TLSA
/// records: a DANE mismatch at the preferred host does not stop delivery to a backup host
/// that matches.
#[tokio::test]
async fn a_mismatch_at_the_preferred_host_leaves_the_backup() {
    let s = DaneScene::new().await;
    let mx20_name = "mx20.dane.test";
    let first = leaf(&s.lab().ca, &[MX10]);
    let second = leaf(&s.lab().ca, &[mx20_name]);
    let mx10 = s.tls_mx(10, &first).await;
    let mx20 = s.tls_mx(20, &second).await;
    // Both records are for the backup's key: a mismatch at the preferred host.
    s.publish_signed_hosts(
        "dane.test",
        &[(10, 10, dane_ee(&second)), (20, 20, dane_ee(&second))],
    );
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "backup", "sent").await;
    assert_relayed_by(&d, "mx20.dane.test");
    assert_sent_under_dane(&d, &mx20).await;
    assert_nothing_sent(&mx10);
}

/// RFC 7671 §8.1 (key rollover): a TLSA RRset may hold the old and the new key; any one
/// usable record that matches authenticates the host.
#[tokio::test]
async fn any_matching_record_of_the_rrset_authenticates() {
    let s = DaneScene::new().await;
    let retired = leaf(&s.lab().ca, &[MX10]);
    let current = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &current).await;
    publish_dane_test(&s, &[dane_ee(&retired), dane_ee(&current)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "rollover", "sent").await;
    assert_sent_under_dane(&d, &mx).await;
}

/// RFC 7672 §2.2: under DANE a server that refuses STARTTLS gets nothing: deferred with
/// Postfix's "refused to start TLS" wording and the server's own status.
#[tokio::test]
async fn starttls_refused_under_dane_defers() {
    let s = DaneScene::new().await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let behaviour = lab::smtp::Behaviour::plain().starttls(&issued.chain_pem, &issued.key_pem);
    let mut behaviour = behaviour;
    behaviour.starttls_reply = Some("454 4.7.0 TLS not available due to local problem".into());
    let mx = s.lab().mx(10, behaviour).await;
    publish_dane_test(&s, &[dane_ee(&issued)]);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "refused", "deferred").await;
    assert_eq!(
        d.reply,
        format!(
            "451 4.7.0 TLS is required, but host {MX10}[{}] refused to start TLS: \
             454 4.7.0 TLS not available due to local problem",
            s.lab().ip(10)
        )
    );
    assert_facts(&d, "none", "dane", "4.7.0");
    assert_nothing_sent(&mx);
}

/// RFC 7672 §2.2.1: a domain without MX records, whose absence is proven (secure NODATA), has
/// the implicit MX host: the domain itself, with TLSA records at `_PORT._tcp.<domain>`.
#[tokio::test]
async fn implicit_mx_under_dane() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let domain = "implicit.test";
    let mx = s.tls_mx(10, &leaf(&sub, &[domain])).await;
    let zone = Zone::new(domain).a(domain, s.lab().ip(10)).signed();
    s.publish(s.with_tlsa(zone, domain, (2, 0, 1), &tlsa_for_ca(&sub, 0, 1)));
    let relay = s.relay("").await;

    let d = s
        .send(&relay, "bob@implicit.test", "implicit", "sent")
        .await;
    assert_sent_under_dane_with_sni(&d, &mx, domain).await;
}

/// RFC 7671 §7: the TLSA name may be a CNAME (one RRset shared by several hosts); the
/// records at its target, securely reached, apply.
#[tokio::test]
async fn tlsa_name_may_be_an_alias() {
    let s = DaneScene::new().await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    let zone = s.zone("dane.test", &[(10, 10)]).signed();
    let zone = zone.cname(&s.tlsa_owner(MX10), "_dane.dane.test").tlsa(
        "_dane.dane.test",
        3,
        1,
        1,
        &tlsa_for(&issued, 1, 1),
    );
    s.publish(zone);
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "tlsa alias", "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, MX10).await;
}

// ---------------------------------------------------------------------------------------------
// CNAME'd MX hosts

/// RFC 7672 §2.2.2, §3.2.2, §8.1: an MX host that is a secure CNAME is looked up under its
/// final name first: the TLSA records there are used, the SNI is that name (the TLSA base
/// domain), and a DANE-TA(2) leaf may carry either the MX host name or the final name.
#[tokio::test]
async fn cname_mx_host_uses_tlsa_at_the_target() {
    let s = DaneScene::new().await;
    let sub = private_intermediate(CertOptions::default());
    let mut other = Zone::new("other-signed.test");
    let mut cases = Vec::new();
    // (domain, lab host, leaf name: the MX host name or the CNAME target)
    for (domain, n, leaf_is_target) in [("dane.test", 10u8, false), ("dane2.test", 11, true)] {
        let mx_name = format!("mx.{domain}");
        let target = format!("host{n}.other-signed.test");
        let issued = leaf(&sub, &[if leaf_is_target { &target } else { &mx_name }]);
        let mx = s.tls_mx(n, &issued).await;
        s.publish(
            Zone::new(domain)
                .mx(10, &mx_name)
                .cname(&mx_name, &target)
                .signed(),
        );
        let (params, data) = dane_ta(&sub);
        other = s.with_tlsa(other.a(&target, s.lab().ip(n)), &target, params, &data);
        cases.push((format!("bob@{domain}"), mx_name, target, mx));
    }
    s.publish(other.signed());
    let relay = s.relay("").await;

    for (rcpt, mx_name, target, mx) in &cases {
        let d = s.send(&relay, rcpt, "cname", "sent").await;
        assert_relayed_by(&d, mx_name);
        assert_sent_under_dane_with_sni(&d, mx, target).await;
    }
}

/// RFC 7672 §2.2.2: with no TLSA records at the CNAME target, those at the original MX host
/// name are used (and that name is then the TLSA base domain, sent as SNI).
#[tokio::test]
async fn cname_mx_host_falls_back_to_tlsa_at_the_original_name() {
    let s = DaneScene::new().await;
    let mx_name = "mx.dane.test";
    let target = "host.other-signed.test";
    let issued = leaf(&s.lab().ca, &["somewhere-else.invalid"]);
    let mx = s.tls_mx(10, &issued).await;
    let zone = Zone::new("dane.test")
        .mx(10, mx_name)
        .cname(mx_name, target)
        .signed();
    s.publish(with_dane_ee(&s, zone, mx_name, &issued));
    s.publish(
        Zone::new("other-signed.test")
            .a(target, s.lab().ip(10))
            .signed(),
    );
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "cname fallback", "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, mx_name).await;
}

// ---------------------------------------------------------------------------------------------
// DANE and MTA-STS

/// RFC 8461 §2, RFC 7672: DANE takes precedence over MTA-STS: a DANE-authenticated host is
/// used although the domain's enforced MTA-STS policy does not list it (policy=dane). The
/// control domain, with the same kind of policy and no DNSSEC, shows that policy is enforced.
#[tokio::test]
async fn dane_takes_precedence_over_a_conflicting_mta_sts_policy() {
    let s = DaneScene::new().await;
    let https = PolicyServer::start(s.lab(), 80).await;
    let enforce_elsewhere = policy("enforce", &["mx.elsewhere.test"]);
    // dane.test: signed, TLSA matching, an enforce policy that lists another MX.
    let issued = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    let zone = s.zone("dane.test", &[(10, 10)]);
    let zone = https.announce(zone, "dane.test", "1").signed();
    s.publish(with_dane_ee(&s, zone, MX10, &issued));
    https.publish(&s.lab().ca, "dane.test", &enforce_elsewhere);
    // sts.test: unsigned, the same policy, a host with a good certificate.
    let sts_mx = s.tls_mx(20, &leaf(&s.lab().ca, &["mx20.sts.test"])).await;
    let zone = https.announce(s.zone("sts.test", &[(10, 20)]), "sts.test", "1");
    s.publish(zone);
    https.publish(&s.lab().ca, "sts.test", &enforce_elsewhere);
    let relay = s
        .relay(&format!("[mta_sts]\nhttps_port = {}\n", https.port()))
        .await;

    let d = s.send(&relay, "bob@sts.test", "control", "deferred").await;
    assert!(
        d.reply
            .contains("not authorized by MTA-STS policy for sts.test"),
        "the control domain's policy is enforced: {}",
        d.line
    );
    assert_nothing_sent(&sts_mx);

    let d = s.send(&relay, BOB, "dane over sts", "sent").await;
    assert_sent_under_dane_with_sni(&d, &mx, MX10).await;
}

/// RFC 8461 §2: with every MX host under DANE, MTA-STS has no say, so a failed MTA-STS lookup
/// (SERVFAIL at `_mta-sts`) does not hold the mail up.
#[tokio::test]
async fn a_failed_mta_sts_lookup_does_not_hold_up_a_dane_domain() {
    let s = DaneScene::new().await;
    let https = PolicyServer::start(s.lab(), 80).await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    let zone = https.announce(s.zone("dane.test", &[(10, 10)]), "dane.test", "1");
    s.publish(with_dane_ee(&s, zone.signed(), MX10, &issued));
    s.lab().dns.servfail("_mta-sts.dane.test");
    let relay = s
        .relay(&format!("[mta_sts]\nhttps_port = {}\n", https.port()))
        .await;

    let d = s.send(&relay, BOB, "sts lookup fails", "sent").await;
    assert_sent_under_dane(&d, &mx).await;
}

// ---------------------------------------------------------------------------------------------
// With the status filter

/// DESIGN.md "Status filter": with the shipped rules, a DANE mismatch (4.7.5) bounces on the
/// first attempt, 5.7.5 in the log line and the DSN.
#[tokio::test]
async fn dane_mismatch_bounces_at_once_with_the_status_filter() {
    let s = DaneScene::new().await;
    let issued = leaf(&s.lab().ca, &[MX10]);
    let other = leaf(&s.lab().ca, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    publish_dane_test(&s, &[dane_ee(&other)]);
    let relay = s.relay(&with_status_filter()).await;

    let d = s.send(&relay, BOB, "mismatch, filtered", "bounced").await;
    assert_facts(&d, "none", "dane", "5.7.5");
    assert!(
        d.reply
            .starts_with("551 5.7.5 Server certificate not verified: DANE"),
        "{}",
        d.line
    );
    let deferred = relay
        .deliveries()
        .into_iter()
        .filter(|d| d.status == "deferred")
        .count();
    assert_eq!(deferred, 0, "bounced on the first attempt");
    assert_nothing_sent(&mx);

    let bounce = s.bounce().await;
    let rcpt = bounce.recipient(BOB);
    assert_eq!(rcpt.must("Action"), "failed");
    assert_eq!(rcpt.must("Status"), "5.7.5");
    let diagnostic = rcpt.must("Diagnostic-Code");
    assert!(
        diagnostic.contains("Server certificate not verified"),
        "{diagnostic}"
    );
}

/// DESIGN.md "Status filter": a TLSA lookup error says nothing about the destination's TLS: it
/// is 4.7.0, which no shipped rule hardens, so the recipient stays deferred (and is retried)
/// instead of bouncing during a DNS outage.
#[tokio::test]
async fn tlsa_lookup_error_stays_deferred_with_the_status_filter() {
    let s = DaneScene::new().await;
    let mx = s.dane_ee_domain("dane.test", 10).await;
    s.lab().dns.servfail(&s.tlsa_owner(MX10));
    let relay = s.relay(&with_status_filter()).await;

    let d = s.send(&relay, BOB, "servfail, filtered", "deferred").await;
    assert_tlsa_lookup_error(&s, &d, MX10);
    // The retry (after the lab's 1 s backoff) is deferred again, not bounced.
    let mark = relay.log_mark();
    let again = relay.wait_for_delivery(mark, BOB, "deferred", WAIT).await;
    assert_eq!(again.reply, d.reply, "{}", again.line);
    assert!(
        relay.deliveries().iter().all(|d| d.status != "bounced"),
        "never bounced"
    );
    assert!(s.sender_mx().messages().is_empty(), "no DSN");
    assert_eq!(mx.connections(), 0);
}

/// DESIGN.md "Status filter": a DNSSEC outage must never make mail bounce. When the TLSA
/// lookup of one MX host fails and the other host fails DANE authentication (4.7.5), the host
/// that could not be judged may yet take the mail: the recipient stays deferred, whichever of
/// the two hosts is preferred. (Two domains, the broken lookup at the preferred host of one
/// and at the backup host of the other.)
#[tokio::test]
async fn a_tlsa_lookup_error_at_any_host_keeps_the_recipient_deferred_with_the_status_filter() {
    let s = DaneScene::new().await;
    let mut servers = Vec::new();
    let mut rcpts = Vec::new();
    for (domain, n, servfail_preferred) in [("dane.test", 10u8, true), ("dane2.test", 11, false)] {
        let (first, second) = (format!("mx{n}.{domain}"), format!("mx{}.{domain}", n + 10));
        for (host, m) in [(&first, n), (&second, n + 10)] {
            servers.push(s.tls_mx(m, &leaf(&s.lab().ca, &[host])).await);
        }
        // Both TLSA RRsets name a key no server has: a mismatch wherever the lookup works.
        let nobodys_key = ((3, 1, 1), vec![7; 32]);
        s.publish_signed_hosts(
            domain,
            &[(10, n, nobodys_key.clone()), (20, n + 10, nobodys_key)],
        );
        let broken = if servfail_preferred { &first } else { &second };
        s.lab().dns.servfail(&s.tlsa_owner(broken));
        rcpts.push(format!("bob@{domain}"));
    }
    let relay = s.relay(&with_status_filter()).await;

    for rcpt in &rcpts {
        relay.submit(&s.mail(rcpt, "outage and mismatch")).await;
    }
    let mut lines = Vec::new();
    for rcpt in &rcpts {
        let line = relay
            .wait_for_log(
                |l| DeliveryLine::parse(l).is_some_and(|d| &d.to == rcpt),
                WAIT,
            )
            .await;
        lines.push(DeliveryLine::parse(&line).expect("a delivery line"));
    }
    for d in &lines {
        assert_eq!(
            d.status, "deferred",
            "a DNSSEC outage at one MX host must not let the filter bounce the mail: {}",
            d.line
        );
        assert!(
            d.field("dsn").is_some_and(|c| c.starts_with("4.")),
            "{}",
            d.line
        );
    }
    for mx in &servers {
        assert_nothing_sent(mx);
    }
}

/// Connection reuse keeps the TLSA RRset in the session's requirement: after the RRset changed
/// (a DANE-TA record added beside the DANE-EE one, both matching), the next message does not
/// take the session verified against the old set; it opens and verifies a new one, which
/// the message after it reuses.
#[tokio::test]
async fn a_session_verified_against_old_tlsa_records_is_not_reused() {
    let s = DaneScene::new().await;
    let root = LabCa::new();
    let issued = leaf(&root, &[MX10]);
    let mx = s.tls_mx(10, &issued).await;
    s.publish_signed("dane.test", 10, &[dane_ee(&issued)]);
    let relay = s.relay("").await;
    let d = s.send(&relay, BOB, "old records", "sent").await;
    assert_facts(&d, "verified", "dane", "2.0.0");
    assert_eq!(d.field("conn_use"), Some("1"), "{}", d.line);

    s.publish_signed("dane.test", 10, &[dane_ee(&issued), dane_ta(&root)]);
    // The lab's records live one second in the relay's cache; the session idles for five.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let d = s.send(&relay, BOB, "new records", "sent").await;
    assert_facts(&d, "verified", "dane", "2.0.0");
    assert_eq!(d.field("conn_use"), Some("1"), "a new session: {}", d.line);
    assert_eq!(mx.connections(), 2);
    let d = s.send(&relay, BOB, "same new records", "sent").await;
    assert_eq!(d.field("conn_use"), Some("2"), "{}", d.line);
    assert_eq!(mx.connections(), 2);
}
