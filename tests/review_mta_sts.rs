//! Acceptance review: MTA-STS (RFC 8461) corners an operator's suite is likely to hit — an MX
//! certificate that names the host only through a wildcard SAN, MX names in capitals with a
//! trailing dot, a TXT record split into several strings, `max_age: 0`, and a domain that
//! goes from `enforce` to `none`.

mod lab;

use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::RData;
use lab::dns::Zone;
use lab::smtp::Behaviour;
use lab::sts::{policy, policy_with_max_age, StsScene, BOB};
use lab::WAIT;

/// RFC 8461 §4.2 / RFC 6125 §6.4.3: a certificate whose only name is `*.example.test` is
/// valid for `mx3.example.test`; enforce delivers, verified.
#[tokio::test]
async fn review_wildcard_san_certificate_is_verified_under_enforce() {
    let s = StsScene::new().await;
    s.publish_example(&[(10, 3)], "w1", &policy("enforce", &["mx3.example.test"]));
    let mx = s.tls_mx(3, &["*.example.test"]).await;
    let relay = s.relay("").await;
    let d = s.send(&relay, BOB, "sts", "sent").await;
    assert_eq!(d.field("tls"), Some("verified"), "{}", d.line);
    assert_eq!(d.field("policy"), Some("mta-sts"), "{}", d.line);
    mx.next_message(WAIT).await;
}

/// MX names are case-insensitive and may carry the root's dot (RFC 4343): `MX3.EXAMPLE.TEST.`
/// matches `mx: mx3.example.test`, and its certificate for the lower-case name is valid.
#[tokio::test]
async fn review_upper_case_mx_name_matches_the_policy() {
    let s = StsScene::new().await;
    let zone = Zone::new("example.test")
        .mx(10, "MX3.EXAMPLE.TEST.")
        .a("mx3.example.test", s.lab().ip(3));
    s.publish(
        zone,
        "example.test",
        "u1",
        &policy("enforce", &["mx3.example.test"]),
    );
    let mx = s.tls_mx(3, &["mx3.example.test"]).await;
    let relay = s.relay("").await;
    let d = s.send(&relay, BOB, "sts", "sent").await;
    assert_eq!(d.field("tls"), Some("verified"), "{}", d.line);
    assert_eq!(d.field("sts_mx"), Some("mx3.example.test"), "{}", d.line);
    mx.next_message(WAIT).await;
}

/// RFC 8461 §3.1 / RFC 7208-style: a TXT record of several strings is one record, the strings
/// concatenated: `"v=STSv1; " "id=split1;"` announces a policy.
#[tokio::test]
async fn review_txt_record_split_over_strings_announces_the_policy() {
    let s = StsScene::new().await;
    let zone = Zone::new("example.test")
        .mx(10, "mx3.example.test")
        .a("mx3.example.test", s.lab().ip(3))
        .a("mta-sts.example.test", s.https().ip())
        .record(
            "_mta-sts.example.test",
            RData::TXT(TXT::new(vec!["v=STSv1; ".into(), "id=split1;".into()])),
        );
    s.https().publish(
        &s.lab().ca,
        "example.test",
        &policy("enforce", &["mx3.example.test"]),
    );
    s.lab().zone(zone);
    // No STARTTLS: under the policy this must defer.
    let mx = s.lab().mx(3, Behaviour::plain()).await;
    let relay = s.relay("").await;
    let d = s.send(&relay, BOB, "sts", "deferred").await;
    assert_eq!(d.field("policy"), Some("mta-sts"), "{}", d.line);
    assert_eq!(d.field("sts_id"), Some("split1"), "{}", d.line);
    assert!(mx.messages().is_empty());
}

/// `max_age: 0` is valid (RFC 8461 §3.2: 0 to 31557600): the policy is not worth caching, but
/// it is the policy in force for the delivery at hand.
#[tokio::test]
async fn review_max_age_zero_policy_still_applies() {
    let s = StsScene::new().await;
    s.publish_example(
        &[(10, 3)],
        "z0",
        &policy_with_max_age("enforce", &["mx3.example.test"], 0),
    );
    let mx = s.lab().mx(3, Behaviour::plain()).await;
    let relay = s.relay("").await;
    let d = s.send(&relay, BOB, "sts", "deferred").await;
    assert_eq!(d.field("policy"), Some("mta-sts"), "{}", d.line);
    assert!(d.reply.contains("TLS is required"), "{}", d.line);
    assert!(mx.messages().is_empty());
}

/// RFC 8461 §8.3 (removing MTA-STS): the domain publishes `mode: none` under a new id; the next
/// attempt honours it and delivers without TLS, `policy=none`.
#[tokio::test]
async fn review_enforce_to_none_is_honoured_on_the_next_attempt() {
    let s = StsScene::new().await;
    s.publish_example(&[(10, 3)], "e1", &policy("enforce", &["mx3.example.test"]));
    let mx = s.lab().mx(3, Behaviour::plain()).await;
    let relay = s.relay("").await;
    let d = s.send(&relay, BOB, "sts", "deferred").await;
    assert_eq!(d.field("policy"), Some("mta-sts"), "{}", d.line);

    let mark = relay.log_mark();
    s.publish_example(&[(10, 3)], "n2", &policy("none", &["mx3.example.test"]));
    let d = relay.wait_for_delivery(mark, BOB, "sent", WAIT).await;
    assert_eq!(d.field("policy"), Some("none"), "{}", d.line);
    mx.next_message(WAIT).await;
}
