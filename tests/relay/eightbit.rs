//! 8-bit content and a next hop without 8BITMIME (RFC 6152 §3): the relay converts the 8-bit
//! body parts to quoted-printable (`delivery.mime_output_conversion`, on by default), or, with
//! conversion off, sends the octets as they are; a server that offers 8BITMIME gets the
//! original bytes with `BODY=8BITMIME`.

use crate::lab::smtp::Behaviour;
use crate::lab::submit::Submission;
use crate::lab::WAIT;
use crate::support::{World, BOB, SENDER};
use mail_parser::MimeHeaders;

/// The 8-bit text of the message's first part.
const TEXT: &str = "Grüße aus Köln: 5 € = fünf Euro, trailing space \r\n\
                    and a long line that goes on and on, well past the seventy-six characters of \
                    quoted-printable, with ümlauts\r\n";

/// The base64 part, which must pass untouched.
const BASE64: &str = "SGVsbG8sIHdvcmxkIQ==";

/// A multipart message: an 8-bit text part and a base64 attachment.
fn eight_bit_message() -> Vec<u8> {
    format!(
        "From: <{SENDER}>\r\nTo: <{BOB}>\r\nSubject: 8-bit\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\n\
         --=_b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\
         \r\n{TEXT}--=_b\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{BASE64}\r\n--=_b--\r\n"
    )
    .into_bytes()
}

fn submission(data: &[u8]) -> Submission {
    Submission::new(SENDER, data.to_vec())
        .param("BODY=8BITMIME")
        .rcpt(BOB)
}

fn without_8bitmime() -> Behaviour {
    Behaviour::plain().extensions(|e| e.eightbitmime = false)
}

fn conversion_logged(line: &str) -> bool {
    line.contains("does not support 8BITMIME: converted 8-bit MIME parts to quoted-printable")
}

#[tokio::test]
async fn eightbit_parts_are_converted_for_a_server_without_8bitmime() {
    let (_w, mx, relay) = World::with_example_mx(without_8bitmime()).await;
    let data = eight_bit_message();
    relay.submit(&submission(&data)).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_param("BODY"), None, "{:?}", m.mail_params);
    assert!(
        m.data.is_ascii(),
        "8-bit octets reached a 7-bit server:\n{}",
        m.data_text()
    );
    let text = m.data_text();
    for line in text.split("\r\n") {
        assert!(line.len() <= 76, "line of {}: {line:?}", line.len());
    }
    assert!(text.contains(&format!("base64\r\n\r\n{BASE64}\r\n--=_b--\r\n")));

    let parsed = m.parse();
    let part = &parsed.parts[1];
    assert_eq!(part.content_transfer_encoding(), Some("quoted-printable"));
    assert_eq!(parsed.body_text(0).as_deref(), Some(TEXT.trim_end()));
    assert_eq!(
        parsed.attachment(0).map(|a| a.contents()),
        Some(&b"Hello, world!"[..])
    );

    let d = relay.delivery(BOB, "sent").await;
    let line = relay.wait_for_log(conversion_logged, WAIT).await;
    let hop = d.field("relay").expect("relay= in the delivery line");
    let expected = format!("{}: relay={hop} does not support 8BITMIME", d.id);
    assert!(line.contains(&expected), "{line}\n{}", d.line);
}

#[tokio::test]
async fn eightbit_octets_go_as_they_are_when_conversion_is_off() {
    let w = World::new().await;
    let mx = w.example_mx(without_8bitmime()).await;
    let config = w
        .lab
        .relay_config()
        .toml("[delivery]\nmime_output_conversion = false");
    let relay = w.lab.start_relay(config).await;
    let data = eight_bit_message();
    relay.submit(&submission(&data)).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_param("BODY"), None, "{:?}", m.mail_params);
    assert!(m.data.ends_with(&data), "changed:\n{}", m.data_text());
    relay.delivery(BOB, "sent").await;
    assert!(!relay.log_lines().iter().any(|l| conversion_logged(l)));
}

#[tokio::test]
async fn eightbit_octets_go_as_they_are_to_a_server_with_8bitmime() {
    let (_w, mx, relay) = World::with_example_mx(Behaviour::plain()).await;
    let data = eight_bit_message();
    relay.submit(&submission(&data)).await;

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_param("BODY"), Some("8BITMIME"));
    assert!(m.data.ends_with(&data), "changed:\n{}", m.data_text());
    relay.delivery(BOB, "sent").await;
    assert!(!relay.log_lines().iter().any(|l| conversion_logged(l)));
}
