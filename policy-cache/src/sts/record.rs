//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1).
//!
//! A domain announces that it has an MTA-STS policy by publishing, at `_mta-sts.<domain>`, a TXT
//! record such as `v=STSv1; id=20160831085700Z;`. The `id` changes whenever the policy does, so a
//! sender that has the policy cached refetches it only when the `id` it sees differs. This module
//! turns the TXT strings of that name into an [`StsRecord`], or says why there is none.

/// A valid MTA-STS TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy instance identifier: 1 to 32 ASCII letters and digits.
    pub id: String,
}

/// Why the TXT records of `_mta-sts.<domain>` announce no usable policy. Every variant means the
/// same to a sender (RFC 8461 §3.1: assume no available policy); they differ for the logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no TXT record begins with v=STSv1")]
    None,
    #[error("{0} TXT records begin with v=STSv1; exactly one is allowed")]
    Multiple(usize),
    #[error("the STS record has no id field")]
    MissingId,
    #[error("the STS record has more than one id field")]
    DuplicateId,
    #[error("the STS record's id {0:?} is not 1-32 letters and digits")]
    BadId(String),
    #[error("the STS record is malformed: {0}")]
    Syntax(String),
}

/// The version field every MTA-STS record starts with.
const VERSION: &str = "v=STSv1";

/// The longest `id` allowed (RFC 8461 §3.1: `1*32(ALPHA / DIGIT)`).
const MAX_ID_LEN: usize = 32;

/// Picks the MTA-STS record out of the TXT records of `_mta-sts.<domain>` and parses it. Each
/// element of `txt` is one TXT record, its strings already concatenated.
/// The text of a TXT record: its strings joined (RFC 7208 §3.3 style, as RFC 8461 §3.1
/// expects of a record split into several strings); `None` for another type.
pub fn txt_text(record: &hickory_resolver::proto::rr::RData) -> Option<String> {
    match record {
        hickory_resolver::proto::rr::RData::TXT(txt) => Some(
            txt.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect::<String>(),
        ),
        _ => None,
    }
}

pub fn parse_records(txt: &[String]) -> Result<StsRecord, RecordError> {
    // RFC 8461 §3.1: records that do not begin with "v=STSv1;" are discarded; if the number of
    // remaining records is not one, assume the domain has no available policy.
    let sts: Vec<&String> = txt.iter().filter(|t| is_sts(t)).collect();
    match sts.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse_record(one),
        many => Err(RecordError::Multiple(many.len())),
    }
}

/// True when the record's first field is exactly `v=STSv1` (so `v=STSv12` is not).
fn is_sts(text: &str) -> bool {
    match text.strip_prefix(VERSION) {
        Some(rest) => rest.is_empty() || rest.starts_with([';', ' ', '\t']),
        None => false,
    }
}

/// Parses one record that begins with `v=STSv1`.
fn parse_record(text: &str) -> Result<StsRecord, RecordError> {
    let mut fields: Vec<&str> = text
        .split(';')
        .map(|f| f.trim_matches([' ', '\t']))
        .collect();
    // RFC 8461 §3.1: `sts-version 1*(*WSP %x3B *WSP sts-field) [%x3B]`: one trailing `;` is
    // allowed, so is whitespace around separators; an empty field elsewhere is not.
    if fields.len() > 1 && fields.last().is_some_and(|f| f.is_empty()) {
        fields.pop();
    }
    if fields.first() != Some(&VERSION) {
        return Err(RecordError::Syntax(format!(
            "bad version field in {text:?}"
        )));
    }
    let mut id = None;
    for field in fields.iter().skip(1) {
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| RecordError::Syntax(format!("field {field:?} has no '='")))?;
        // RFC 8461 §3.1: fields other than `v` and `id` are extensions, ignored by senders.
        if name == "id" {
            if id.is_some() {
                return Err(RecordError::DuplicateId);
            }
            id = Some(value);
        } else if !valid_extension(name, value) {
            return Err(RecordError::Syntax(format!("bad field {field:?}")));
        }
    }
    let id = id.ok_or(RecordError::MissingId)?;
    if !valid_id(id) {
        return Err(RecordError::BadId(id.to_string()));
    }
    Ok(StsRecord { id: id.to_string() })
}

/// RFC 8461 §3.1: `sts-id = %s"id=" 1*32(ALPHA / DIGIT)`.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// RFC 8461 §3.1: `sts-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`,
/// `sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)`.
fn valid_extension(name: &str, value: &str) -> bool {
    let name_ok = name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let value_ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e));
    name_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(records: &[&str]) -> Result<StsRecord, RecordError> {
        let owned: Vec<String> = records.iter().map(|s| s.to_string()).collect();
        parse_records(&owned)
    }

    #[track_caller]
    fn good(records: &[&str], id: &str) {
        assert_eq!(
            parse(records),
            Ok(StsRecord { id: id.to_string() }),
            "{records:?}"
        );
    }

    #[track_caller]
    fn bad(records: &[&str], error: RecordError) {
        assert_eq!(parse(records), Err(error), "{records:?}");
    }

    #[test]
    fn valid_records() {
        good(&["v=STSv1; id=20160831085700Z;"], "20160831085700Z");
        good(&["v=STSv1;id=1"], "1");
        good(&["v=STSv1 ;  id=abc  ; "], "abc");
        good(&["v=STSv1;\tid=abc"], "abc");
        good(
            &[&format!("v=STSv1; id={}", "a".repeat(32))],
            &"a".repeat(32),
        );
        // Unknown (extension) fields are ignored, before or after the id.
        good(&["v=STSv1; ext=1; id=x9; other.name=val"], "x9");
        // Other TXT records at the name are ignored.
        good(&["google-site-verification=abc", "v=STSv1; id=7"], "7");
        good(&["v=spf1 -all", "v=STSv12; id=1", "v=STSv1; id=2"], "2");
    }

    #[test]
    fn no_record() {
        bad(&[], RecordError::None);
        bad(&["v=spf1 -all"], RecordError::None);
        // Field-wise: `v=STSv12` is not version STSv1; the version is case-sensitive and first.
        bad(&["v=STSv12; id=1"], RecordError::None);
        bad(&["v=stsv1; id=1"], RecordError::None);
        bad(&["id=1; v=STSv1"], RecordError::None);
        bad(&[" v=STSv1; id=1"], RecordError::None);
    }

    #[test]
    fn multiple_records() {
        bad(
            &["v=STSv1; id=1", "v=STSv1; id=2"],
            RecordError::Multiple(2),
        );
        bad(
            &["v=STSv1; id=1", "v=STSv1; id=1"],
            RecordError::Multiple(2),
        );
    }

    #[test]
    fn bad_id() {
        bad(&["v=STSv1"], RecordError::MissingId);
        bad(&["v=STSv1;"], RecordError::MissingId);
        bad(&["v=STSv1; ext=1"], RecordError::MissingId);
        bad(&["v=STSv1; id="], RecordError::BadId(String::new()));
        bad(&["v=STSv1; id=a-b"], RecordError::BadId("a-b".into()));
        bad(&["v=STSv1; id=a b"], RecordError::BadId("a b".into()));
        bad(&["v=STSv1; id=é"], RecordError::BadId("é".into()));
        let long = "a".repeat(33);
        bad(&[&format!("v=STSv1; id={long}")], RecordError::BadId(long));
        bad(&["v=STSv1; id=1; id=1"], RecordError::DuplicateId);
        assert!(matches!(
            parse(&["v=STSv1 x; id=1"]),
            Err(RecordError::Syntax(_))
        ));
        bad(&["v=STSv1; id=1; id=2"], RecordError::DuplicateId);
    }

    #[test]
    fn malformed_fields() {
        assert!(matches!(
            parse(&["v=STSv1; id=1; garbage"]),
            Err(RecordError::Syntax(_))
        ));
        assert!(matches!(
            parse(&["v=STSv1;; id=1"]),
            Err(RecordError::Syntax(_))
        ));
        assert!(matches!(
            parse(&["v=STSv1; id=1; _x=1"]),
            Err(RecordError::Syntax(_))
        ));
        assert!(matches!(
            parse(&["v=STSv1; id=1; x="]),
            Err(RecordError::Syntax(_))
        ));
    }
}
