//! ESMTP parameters of MAIL FROM and RCPT TO (RFC 5321 §4.1.2 `esmtp-param`): SIZE (RFC 1870),
//! BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET/ENVID and NOTIFY/ORCPT of DSN (RFC 3461),
//! REQUIRETLS (RFC 8689) and AUTH= (RFC 4954 §5). Parsing is pure; whether a parameter is
//! allowed in this session (REQUIRETLS needs TLS) is the session's decision.

use crate::envelope::{xtext_decode, BodyType, Notify, Ret};
use crate::reply::{EnhancedCode, Reply};

/// Parameters given on MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870: the client's estimate of the message size.
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// RFC 3461 §4.4, decoded from xtext.
    pub envid: Option<String>,
    pub requiretls: bool,
}

/// Parameters given on RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// RFC 3461 §4.2: `(addr-type lower-cased, decoded address)`.
    pub orcpt: Option<(String, String)>,
}

/// RFC 5321 §4.1.1.11: an unrecognized or unimplemented parameter gets 555.
fn unsupported(key: &str) -> Reply {
    Reply::new(
        555,
        EnhancedCode::new(5, 5, 4),
        format!("Unsupported option: {key}"),
    )
}

fn bad_value(key: &str) -> Reply {
    Reply::new(
        501,
        EnhancedCode::new(5, 5, 4),
        format!("Bad {key} parameter syntax"),
    )
}

/// Splits `KEY=VALUE KEY …` into upper-cased keys and raw values; a repeated key is an error.
fn split_params(text: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        // RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-").
        let key_ok = key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !key_ok {
            return Err(Reply::new(
                501,
                EnhancedCode::new(5, 5, 4),
                "Bad parameter syntax",
            ));
        }
        let key = key.to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(Reply::new(
                501,
                EnhancedCode::new(5, 5, 4),
                format!("Duplicate {key} parameter"),
            ));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn flag(key: &str, value: Option<&str>) -> Result<bool, Reply> {
    match value {
        None => Ok(true),
        Some(_) => Err(bad_value(key)),
    }
}

fn required<'a>(key: &str, value: Option<&'a str>) -> Result<&'a str, Reply> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad_value(key))
}

/// RFC 3461 §4: xtext is printable ASCII except `+` and `=`, plus `+XX` hex escapes.
fn decode_xtext(key: &str, value: &str) -> Result<String, Reply> {
    let printable = value
        .bytes()
        .all(|b| (b'!'..=b'~').contains(&b) && b != b'=');
    let decoded = if printable { xtext_decode(value) } else { None };
    decoded.ok_or_else(|| bad_value(key))
}

pub fn parse_mail_params(text: &str) -> Result<MailParams, Reply> {
    let mut p = MailParams::default();
    for (key, value) in split_params(text)? {
        match key.as_str() {
            "SIZE" => {
                let v = required(&key, value)?;
                // RFC 1870 §4: size-value = 1*20DIGIT.
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad_value(&key));
                }
                p.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            "BODY" => {
                p.body = match required(&key, value)?.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => return Err(bad_value(&key)),
                }
            }
            "SMTPUTF8" => p.smtputf8 = flag(&key, value)?,
            "REQUIRETLS" => p.requiretls = flag(&key, value)?,
            "RET" => {
                p.ret = Some(match required(&key, value)?.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Headers,
                    _ => return Err(bad_value(&key)),
                });
            }
            "ENVID" => {
                let v = required(&key, value)?;
                // RFC 3461 §4.4: at most 100 characters.
                if v.len() > 100 {
                    return Err(bad_value(&key));
                }
                p.envid = Some(decode_xtext(&key, v)?);
            }
            // RFC 4954 §5: the AUTH= identity a trusted relay vouches for; we accept it
            // (it is xtext) and ignore it, as the RFC allows for untrusted clients.
            "AUTH" => {
                decode_xtext(&key, required(&key, value)?)?;
            }
            _ => return Err(unsupported(&key)),
        }
    }
    Ok(p)
}

pub fn parse_rcpt_params(text: &str) -> Result<RcptParams, Reply> {
    let mut p = RcptParams::default();
    for (key, value) in split_params(text)? {
        match key.as_str() {
            "NOTIFY" => p.notify = Some(parse_notify(required(&key, value)?)?),
            "ORCPT" => p.orcpt = Some(parse_orcpt(required(&key, value)?)?),
            _ => return Err(unsupported(&key)),
        }
    }
    Ok(p)
}

/// RFC 3461 §4.1: `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY`.
fn parse_notify(value: &str) -> Result<Notify, Reply> {
    let mut n = Notify::default();
    for word in value.split(',') {
        let seen = match word.to_ascii_uppercase().as_str() {
            "NEVER" => std::mem::replace(&mut n.never, true),
            "SUCCESS" => std::mem::replace(&mut n.success, true),
            "FAILURE" => std::mem::replace(&mut n.failure, true),
            "DELAY" => std::mem::replace(&mut n.delay, true),
            _ => return Err(bad_value("NOTIFY")),
        };
        if seen {
            return Err(bad_value("NOTIFY"));
        }
    }
    // NEVER must stand alone.
    if n.never && (n.success || n.failure || n.delay) {
        return Err(bad_value("NOTIFY"));
    }
    Ok(n)
}

/// RFC 3461 §4.2: `addr-type ";" xtext`, addr-type an atom such as `rfc822` or `utf-8`.
fn parse_orcpt(value: &str) -> Result<(String, String), Reply> {
    // RFC 3461 §4.2: at most 500 characters.
    if value.len() > 500 {
        return Err(bad_value("ORCPT"));
    }
    let (kind, addr) = value.split_once(';').ok_or_else(|| bad_value("ORCPT"))?;
    let atom = !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c));
    if !atom || addr.is_empty() {
        return Err(bad_value("ORCPT"));
    }
    Ok((kind.to_ascii_lowercase(), decode_xtext("ORCPT", addr)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(text: &str) -> MailParams {
        parse_mail_params(text).unwrap_or_else(|r| panic!("{text:?}: {r}"))
    }

    fn rcpt(text: &str) -> RcptParams {
        parse_rcpt_params(text).unwrap_or_else(|r| panic!("{text:?}: {r}"))
    }

    fn bad_mail(text: &str, code: &str) {
        let r = parse_mail_params(text).expect_err(text);
        assert!(r.to_string().starts_with(code), "{text:?}: {r}");
    }

    fn bad_rcpt(text: &str, code: &str) {
        let r = parse_rcpt_params(text).expect_err(text);
        assert!(r.to_string().starts_with(code), "{text:?}: {r}");
    }

    #[test]
    fn mail_params() {
        assert_eq!(mail(""), MailParams::default());
        let p = mail("SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 REQUIRETLS");
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, BodyType::EightBitMime);
        assert!(p.smtputf8 && p.requiretls);
        assert_eq!(p.ret, Some(Ret::Headers));
        assert_eq!(p.envid.as_deref(), Some("QQ+1"));
        assert_eq!(mail("ret=full body=7bit").ret, Some(Ret::Full));
        assert_eq!(mail("AUTH=<>").size, None);
        assert_eq!(mail("SIZE=99999999999999999999").size, Some(u64::MAX));
    }

    #[test]
    fn bad_mail_params() {
        bad_mail("SIZE=", "501 5.5.4");
        bad_mail("SIZE=12a", "501 5.5.4");
        bad_mail("SIZE=123456789012345678901", "501 5.5.4");
        bad_mail("BODY=BINARYMIME", "501 5.5.4");
        bad_mail("RET=ALL", "501 5.5.4");
        bad_mail("RET=FULL RET=HDRS", "501 5.5.4");
        bad_mail("ENVID=a+zz", "501 5.5.4");
        bad_mail("ENVID=a=b", "501 5.5.4");
        bad_mail(&format!("ENVID={}", "x".repeat(101)), "501 5.5.4");
        bad_mail("SMTPUTF8=yes", "501 5.5.4");
        bad_mail("REQUIRETLS=1", "501 5.5.4");
        bad_mail("FROBNICATE=1", "555 5.5.4");
        bad_mail("=x", "501 5.5.4");
    }

    #[test]
    fn rcpt_params() {
        assert_eq!(rcpt(""), RcptParams::default());
        let p = rcpt("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40example.net");
        let n = p.notify.unwrap();
        assert!(n.success && n.failure && !n.delay && !n.never);
        assert_eq!(p.orcpt, Some(("rfc822".into(), "bob@example.net".into())));
        assert!(rcpt("notify=never").notify.unwrap().never);
        assert_eq!(rcpt("ORCPT=RFC822;a@b").orcpt.unwrap().0, "rfc822");
    }

    #[test]
    fn bad_rcpt_params() {
        bad_rcpt("NOTIFY=", "501 5.5.4");
        bad_rcpt("NOTIFY=NEVER,SUCCESS", "501 5.5.4");
        bad_rcpt("NOTIFY=SOMETIMES", "501 5.5.4");
        bad_rcpt("NOTIFY=SUCCESS,,DELAY", "501 5.5.4");
        bad_rcpt("NOTIFY=DELAY,DELAY", "501 5.5.4");
        bad_rcpt("ORCPT=bob@example.net", "501 5.5.4");
        bad_rcpt("ORCPT=;bob@example.net", "501 5.5.4");
        bad_rcpt("ORCPT=rfc822;", "501 5.5.4");
        bad_rcpt("ORCPT=rfc822;a+4", "501 5.5.4");
        bad_rcpt("NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4");
        bad_rcpt("SIZE=10", "555 5.5.4");
    }
}
