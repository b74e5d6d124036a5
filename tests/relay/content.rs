//! What travels: the message content byte for byte (dot-stuffing is transport, not content,
//! RFC 5321 §4.5.2; 8-bit bodies with BODY=8BITMIME, RFC 6152) and the DSN parameters that must
//! be relayed to a DSN-capable next hop (RFC 3461 §4.1–4.4) and only to one.

use crate::lab::smtp::Behaviour;
use crate::lab::submit::{message, Submission};
use crate::lab::WAIT;
use crate::support::{World, BOB, SENDER};

/// The content arrives exactly as submitted, after any trace headers the relay prepends;
/// lines starting with '.' are dot-stuffed on the wire.
#[tokio::test]
async fn content_is_preserved_byte_for_byte() {
    let (_w, mx, relay) = World::with_example_mx(Behaviour::plain()).await;

    let mut data = format!(
        "From: <{SENDER}>\r\nTo: <{BOB}>\r\nSubject: exact\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    .into_bytes();
    data.extend_from_slice(b".starts with a dot\r\n..two dots\r\n.\r\n");
    data.extend_from_slice("Grüße, 8-bit: ".as_bytes());
    data.extend_from_slice(&[0xe9, 0xff, 0x80]);
    data.extend_from_slice(b"\r\n   trailing spaces   \r\n\tTab\r\n\r\nlast line\r\n");
    let s = Submission::new(SENDER, data.clone())
        .param("BODY=8BITMIME")
        .rcpt(BOB);
    relay.submit(&s).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_param("BODY"), Some("8BITMIME"));
    assert!(
        m.data.ends_with(&data),
        "content changed:\nsent:\n{}\nreceived:\n{}",
        String::from_utf8_lossy(&data),
        m.data_text()
    );
    let prefix = String::from_utf8_lossy(&m.data[..m.data.len() - data.len()]).into_owned();
    for line in prefix.split_terminator("\r\n") {
        assert!(
            line.starts_with("Received:") || line.starts_with([' ', '\t']),
            "only trace headers may be prepended, got {line:?}"
        );
    }
    let raw = String::from_utf8_lossy(&m.raw_data);
    assert!(
        raw.contains("\r\n..starts with a dot\r\n...two dots\r\n..\r\n"),
        "{raw}"
    );
}

/// RET, ENVID, NOTIFY and ORCPT reach a next hop that advertises DSN, xtext intact.
#[tokio::test]
async fn dsn_parameters_are_relayed_to_a_dsn_capable_mx() {
    let (w, mx, relay) = World::with_example_mx(Behaviour::plain()).await;
    let s = w
        .mail(BOB, "dsn params")
        .param("RET=HDRS")
        .param("ENVID=env+2B1");
    let s = Submission {
        rcpts: vec![(
            BOB.into(),
            vec![
                "NOTIFY=SUCCESS,FAILURE".into(),
                "ORCPT=rfc822;Bob+2Bx@example.test".into(),
            ],
        )],
        ..s
    };
    relay.submit(&s).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_param("RET"), Some("HDRS"), "{:?}", m.mail_params);
    assert_eq!(
        m.mail_param("ENVID"),
        Some("env+2B1"),
        "{:?}",
        m.mail_params
    );
    let r = &m.rcpts[0];
    let notify = r
        .param("NOTIFY")
        .expect("NOTIFY relayed")
        .to_ascii_uppercase();
    let mut notify: Vec<&str> = notify.split(',').collect();
    notify.sort();
    assert_eq!(notify, ["FAILURE", "SUCCESS"], "{:?}", r.params);
    assert_eq!(
        r.param("ORCPT").map(|o| o.to_ascii_lowercase()),
        Some("rfc822;bob+2bx@example.test".into()),
        "{:?}",
        r.params
    );
}

/// RFC 3461 §4: DSN parameters go only to a server that advertised DSN.
#[tokio::test]
async fn dsn_parameters_are_not_sent_to_an_mx_without_dsn() {
    let no_dsn = Behaviour::plain().extensions(|e| e.dsn = false);
    let (_w, mx, relay) = World::with_example_mx(no_dsn).await;
    let s = Submission::new(SENDER, message(SENDER, BOB, "x", "y\n"))
        .param("RET=HDRS")
        .param("ENVID=e1")
        .rcpt_with(BOB, &["NOTIFY=FAILURE", "ORCPT=rfc822;bob@example.test"]);
    relay.submit(&s).await;
    let m = mx.next_message(WAIT).await;
    for p in ["RET", "ENVID"] {
        assert!(m.mail_param(p).is_none(), "{:?}", m.mail_params);
    }
    for p in ["NOTIFY", "ORCPT"] {
        assert!(m.rcpts[0].param(p).is_none(), "{:?}", m.rcpts[0].params);
    }
}
