//! The ESMTP parameters of MAIL FROM and RCPT TO that a message carries on: SIZE (RFC 1870),
//! BODY=8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), REQUIRETLS (RFC 8689) and the DSN
//! parameters RET, ENVID, NOTIFY and ORCPT (RFC 3461), each only where the server advertised
//! its extension.

use super::session::Extensions;
use crate::envelope::{xtext_encode, BodyType, Envelope, Recipient, Ret};
use smtp_proto::{EXT_8BIT_MIME, EXT_DSN, EXT_REQUIRE_TLS, EXT_SIZE, EXT_SMTP_UTF8};

pub(crate) fn rcpt_command(rcpt: &Recipient, ext: Extensions) -> String {
    format!("RCPT TO:<{}>{}\r\n", rcpt.address, rcpt_params(rcpt, ext))
}

/// MAIL FROM parameters, each only when the server advertised its extension.
pub(crate) fn mail_params(env: &Envelope, ext: Extensions, size: usize, utf8: bool) -> String {
    let mut p = String::new();
    if ext.has(EXT_SIZE) {
        p.push_str(&format!(" SIZE={size}"));
    }
    // RFC 6152: declare 8-bit content when the server understands it. When it does not,
    // Postfix sends the message anyway (most servers pass 8-bit data), and so do we.
    if env.body == BodyType::EightBitMime && ext.has(EXT_8BIT_MIME) {
        p.push_str(" BODY=8BITMIME");
    }
    if utf8 && ext.has(EXT_SMTP_UTF8) {
        p.push_str(" SMTPUTF8");
    }
    // RFC 8689 §4.2.1: REQUIRETLS travels on; a server that did not advertise it was never
    // given the message (the session checks that first).
    if env.requiretls && ext.has(EXT_REQUIRE_TLS) {
        p.push_str(" REQUIRETLS");
    }
    if ext.has(EXT_DSN) {
        // RFC 3461 §4.3, §4.4: RET and ENVID travel on to the next DSN-capable hop.
        match env.ret {
            Some(Ret::Full) => p.push_str(" RET=FULL"),
            Some(Ret::Headers) => p.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &env.envid {
            p.push_str(&format!(" ENVID={}", xtext_encode(envid)));
        }
    }
    p
}

/// RCPT TO parameters: RFC 3461 §4.1 NOTIFY and §4.2 ORCPT, when the server speaks DSN.
pub(crate) fn rcpt_params(rcpt: &Recipient, ext: Extensions) -> String {
    if !ext.has(EXT_DSN) {
        return String::new();
    }
    let mut p = String::new();
    if let Some(n) = rcpt.notify {
        let words: Vec<&str> = if n.never {
            vec!["NEVER"]
        } else {
            [
                (n.success, "SUCCESS"),
                (n.failure, "FAILURE"),
                (n.delay, "DELAY"),
            ]
            .into_iter()
            .filter_map(|(on, word)| on.then_some(word))
            .collect()
        };
        if !words.is_empty() {
            p.push_str(&format!(" NOTIFY={}", words.join(",")));
        }
    }
    if let Some((kind, addr)) = &rcpt.orcpt {
        p.push_str(&format!(" ORCPT={kind};{}", xtext_encode(addr)));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Notify;
    use smtp_proto::EXT_PIPELINING;

    fn ext(mask: u32) -> Extensions {
        Extensions { mask, size: 0 }
    }

    #[test]
    fn mail_parameters_follow_the_advertised_extensions() {
        let mut env = Envelope::new("alice@example.org");
        env.body = BodyType::EightBitMime;
        env.ret = Some(Ret::Headers);
        env.envid = Some("id+1=x".into());
        assert_eq!(mail_params(&env, ext(EXT_PIPELINING), 10, true), "");
        assert_eq!(
            mail_params(
                &env,
                ext(EXT_SIZE | EXT_8BIT_MIME | EXT_DSN | EXT_SMTP_UTF8),
                10,
                true
            ),
            " SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx"
        );
        assert_eq!(mail_params(&env, ext(EXT_SMTP_UTF8), 10, false), "");
    }

    #[test]
    fn rcpt_parameters() {
        let mut r = Recipient::new("bob@example.net");
        assert_eq!(rcpt_params(&r, ext(EXT_DSN)), "");
        r.notify = Some(Notify {
            success: true,
            failure: true,
            ..Default::default()
        });
        r.orcpt = Some(("rfc822".into(), "Bob+x@example.net".into()));
        assert_eq!(
            rcpt_params(&r, ext(EXT_DSN)),
            " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@example.net"
        );
        assert_eq!(rcpt_params(&r, ext(0)), "");
        r.notify = Some(Notify {
            never: true,
            ..Default::default()
        });
        assert_eq!(
            rcpt_params(&r, ext(EXT_DSN)),
            " NOTIFY=NEVER ORCPT=rfc822;Bob+2Bx@example.net"
        );
    }
}
