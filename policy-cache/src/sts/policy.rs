//! The MTA-STS policy file (RFC 8461 §3.2): `version`, `mode`, `mx` patterns, `max_age`.
//!
//! The policy is a short text file of `key: value` lines served at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`. It says how strictly the domain wants TLS
//! (`mode`), which MX host names are legitimate (`mx`, where `*.` stands for exactly one label)
//! and how long a sender may cache it (`max_age`, seconds). [`Policy::parse`] is strict about the
//! fields a sender acts on and ignores the ones it does not know.

use serde::{Deserialize, Serialize};

/// RFC 8461 §5: what a sender does with a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    /// The mode's name as the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// One `mx:` line: a host name, or `*.` plus a domain (a wildcard for exactly one label).
/// Stored lower-cased, as A-labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MxPattern(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<MxPattern>,
    /// Seconds, at most 31557600 (RFC 8461 §3.2).
    pub max_age: u32,
}

/// Why a policy file was rejected. A rejected policy is a failed fetch (RFC 8461 §3.2, §5.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("line {line}: {text:?} is not a `key: value` field")]
    Syntax { line: usize, text: String },
    #[error("field {0:?} appears more than once")]
    Duplicate(String),
    #[error("required field {0:?} is missing")]
    Missing(&'static str),
    #[error("version {0:?} is not STSv1")]
    BadVersion(String),
    #[error("mode {0:?} is not enforce, testing or none")]
    BadMode(String),
    #[error("max_age {0:?} is not 1 to 10 digits")]
    BadMaxAge(String),
    #[error("max_age {0} exceeds 31557600 seconds")]
    MaxAgeTooLarge(u64),
    #[error("mx {0:?} is not a host name or a `*.` wildcard")]
    BadMx(String),
    #[error("mode {0} needs at least one mx field")]
    NoMx(&'static str),
}

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about one year).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// RFC 8461 §3.2: `sts-policy-max-age-value = 1*10(DIGIT)`.
const MAX_AGE_DIGITS: usize = 10;

/// RFC 1035 §2.3.4: a name is at most 253 characters in text form (without the final dot).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// The fields seen so far while parsing; `None` until a line sets one.
#[derive(Default)]
struct Fields {
    version: Option<()>,
    mode: Option<Mode>,
    max_age: Option<u32>,
    mx: Vec<MxPattern>,
}

impl Policy {
    /// Parses a policy file. LF and CRLF line ends are both accepted, blank lines are skipped,
    /// whitespace around values is ignored.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut fields = Fields::default();
        // RFC 8461 §3.2: `sts-policy-term = LF / CRLF`.
        for (index, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim_matches([' ', '\t']).is_empty() {
                continue;
            }
            let (key, value) = split_field(line).ok_or_else(|| PolicyError::Syntax {
                line: index + 1,
                text: line.to_string(),
            })?;
            fields.set(key, value)?;
        }
        fields.finish()
    }

    /// The pattern that `host` (an MX host name) matches, if any. The host is normalized like
    /// the patterns (lower case, A-labels, no trailing dot) before comparing.
    pub fn matching(&self, host: &str) -> Option<&MxPattern> {
        let host = normalize_name(host)?;
        self.mx.iter().find(|p| p.matches_normalized(&host))
    }
}

impl Fields {
    /// Takes one `key: value` line. RFC 8461 §3.2: field names are case-sensitive, each of
    /// version, mode and max_age appears once, mx once or more, other fields are ignored.
    fn set(&mut self, key: &str, value: &str) -> Result<(), PolicyError> {
        match key {
            "version" => once(&mut self.version, key, parse_version(value)?),
            "mode" => once(&mut self.mode, key, parse_mode(value)?),
            "max_age" => once(&mut self.max_age, key, parse_max_age(value)?),
            "mx" => {
                self.mx.push(MxPattern::parse(value)?);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<Policy, PolicyError> {
        self.version.ok_or(PolicyError::Missing("version"))?;
        let mode = self.mode.ok_or(PolicyError::Missing("mode"))?;
        let max_age = self.max_age.ok_or(PolicyError::Missing("max_age"))?;
        // RFC 8461 §3.2: mx is required at least once, except when mode is "none".
        if self.mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx(mode.as_str()));
        }
        Ok(Policy {
            mode,
            mx: self.mx,
            max_age,
        })
    }
}

/// Stores a field that may appear only once; a second occurrence is an error even when it
/// repeats the same value, since a sender cannot know which one the domain meant.
fn once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), PolicyError> {
    if slot.is_some() {
        return Err(PolicyError::Duplicate(key.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

/// Splits `key: value`; `None` when the line has no colon or the key is not a field name
/// (RFC 8461 §3.2: `sts-policy-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`).
fn split_field(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    let key_ok = key.len() <= 32
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    key_ok.then(|| (key, value.trim_matches([' ', '\t'])))
}

/// RFC 8461 §3.2: `sts-policy-version-value = %s"STSv1"`.
fn parse_version(value: &str) -> Result<(), PolicyError> {
    if value == "STSv1" {
        Ok(())
    } else {
        Err(PolicyError::BadVersion(value.to_string()))
    }
}

/// RFC 8461 §3.2: `sts-policy-mode-value = %s"testing" / %s"enforce" / %s"none"`.
fn parse_mode(value: &str) -> Result<Mode, PolicyError> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        other => Err(PolicyError::BadMode(other.to_string())),
    }
}

/// RFC 8461 §3.2: `sts-policy-max-age-value = 1*10(DIGIT)`, at most 31557600.
fn parse_max_age(value: &str) -> Result<u32, PolicyError> {
    let digits_ok = !value.is_empty()
        && value.len() <= MAX_AGE_DIGITS
        && value.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok {
        return Err(PolicyError::BadMaxAge(value.to_string()));
    }
    // Ten digits always fit in a u64.
    let seconds: u64 = value
        .parse()
        .map_err(|_| PolicyError::BadMaxAge(value.to_string()))?;
    match u32::try_from(seconds) {
        Ok(s) if s <= MAX_AGE_LIMIT => Ok(s),
        _ => Err(PolicyError::MaxAgeTooLarge(seconds)),
    }
}

impl MxPattern {
    /// Parses and normalizes an `mx` value: `host.example` or `*.example`, in U-labels or
    /// A-labels, any case, with or without a trailing dot.
    pub fn parse(value: &str) -> Result<MxPattern, PolicyError> {
        let bad = || PolicyError::BadMx(value.to_string());
        let (wildcard, name) = match value.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let name = normalize_name(name).ok_or_else(bad)?;
        Ok(MxPattern(if wildcard { format!("*.{name}") } else { name }))
    }

    /// Whether `host` (any form) matches this pattern.
    pub fn matches(&self, host: &str) -> bool {
        normalize_name(host).is_some_and(|h| self.matches_normalized(&h))
    }

    /// RFC 8461 §4.1: a `*.` wildcard matches exactly one leftmost label: `*.example.com`
    /// matches `mx1.example.com` but neither `example.com` nor `a.mx1.example.com`.
    fn matches_normalized(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => self.0 == host,
        }
    }
}

/// A host name in the form patterns are compared in: A-labels (IDNA, RFC 5891), lower case,
/// without the trailing dot; `None` if it is not a valid host name (RFC 5321 §4.1.2 `Domain`).
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ascii = idna::domain_to_ascii(name).ok()?;
    let valid = !ascii.is_empty() && ascii.len() <= MAX_NAME_LEN && ascii.split('.').all(ldh_label);
    valid.then_some(ascii)
}

/// RFC 5321 §4.1.2: `sub-domain = Let-dig [Ldh-str]`, at most 63 octets (RFC 1035 §2.3.4).
fn ldh_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_LEN
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(patterns: &[&str]) -> Vec<MxPattern> {
        patterns.iter().map(|p| MxPattern(p.to_string())).collect()
    }

    #[track_caller]
    fn good(text: &str, mode: Mode, patterns: &[&str], max_age: u32) {
        let expected = Policy {
            mode,
            mx: mx(patterns),
            max_age,
        };
        assert_eq!(Policy::parse(text), Ok(expected), "{text:?}");
    }

    #[track_caller]
    fn bad(text: &str, error: PolicyError) {
        assert_eq!(Policy::parse(text), Err(error), "{text:?}");
    }

    /// A policy with `max_age` set to `value`, otherwise valid.
    fn with_max_age(value: &str) -> String {
        format!("version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: {value}\n")
    }

    /// A valid enforce policy with the line of `field` left out.
    fn without(field: &str) -> String {
        let valid = "version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 60\n";
        let prefix = format!("{field}:");
        valid
            .lines()
            .filter(|line| !line.starts_with(&prefix))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn rfc_example() {
        good(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n\
             mx: backupmx.example.com\r\nmax_age: 604800\r\n",
            Mode::Enforce,
            &["mail.example.com", "*.example.net", "backupmx.example.com"],
            604800,
        );
    }

    #[test]
    fn line_ends_and_whitespace() {
        let lf = "version: STSv1\nmode: testing\nmx: mx.example\nmax_age: 86400";
        good(lf, Mode::Testing, &["mx.example"], 86400);
        good(
            &lf.replace('\n', "\r\n"),
            Mode::Testing,
            &["mx.example"],
            86400,
        );
        good(
            "version:STSv1\nmode:\t testing \t\nmx:   mx.example  \r\nmax_age: 86400  \n\n",
            Mode::Testing,
            &["mx.example"],
            86400,
        );
        // Version need not come first (RFC 8461 §3.2: fields in any order).
        good(
            "mode: enforce\nmx: mx.example\nmax_age: 1\nversion: STSv1\n",
            Mode::Enforce,
            &["mx.example"],
            1,
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        good(
            "version: STSv1\nmode: enforce\nfoo: bar\nfoo: baz\nmx: mx.example\nmax_age: 60\n\
             x-ext.1: some value: with colon\n",
            Mode::Enforce,
            &["mx.example"],
            60,
        );
    }

    #[test]
    fn max_age_bounds() {
        let max = |v: &str, age: u32| good(&with_max_age(v), Mode::Enforce, &["mx.example"], age);
        max("0", 0);
        max("31557600", 31_557_600);
        max(" 5 ", 5);
        max("0000000005", 5);
        bad(
            &with_max_age("31557601"),
            PolicyError::MaxAgeTooLarge(31_557_601),
        );
        bad(
            &with_max_age("9999999999"),
            PolicyError::MaxAgeTooLarge(9_999_999_999),
        );
        bad(
            &with_max_age("12345678901"),
            PolicyError::BadMaxAge("12345678901".into()),
        );
        bad(&with_max_age("+5"), PolicyError::BadMaxAge("+5".into()));
        bad(&with_max_age("-5"), PolicyError::BadMaxAge("-5".into()));
        bad(&with_max_age("5s"), PolicyError::BadMaxAge("5s".into()));
        bad(&with_max_age("5 5"), PolicyError::BadMaxAge("5 5".into()));
        bad(&with_max_age(""), PolicyError::BadMaxAge(String::new()));
    }

    #[test]
    fn missing_fields() {
        bad(&without("version"), PolicyError::Missing("version"));
        bad(&without("mode"), PolicyError::Missing("mode"));
        bad(&without("max_age"), PolicyError::Missing("max_age"));
        bad(&without("mx"), PolicyError::NoMx("enforce"));
        bad(
            "version: STSv1\nmode: testing\nmax_age: 60\n",
            PolicyError::NoMx("testing"),
        );
        bad("", PolicyError::Missing("version"));
    }

    #[test]
    fn mode_none_needs_no_mx() {
        good(
            "version: STSv1\nmode: none\nmax_age: 60\n",
            Mode::None,
            &[],
            60,
        );
        good(
            "version: STSv1\nmode: none\nmx: mx.example\nmax_age: 60\n",
            Mode::None,
            &["mx.example"],
            60,
        );
    }

    #[test]
    fn strict_values() {
        let base = "mode: enforce\nmx: mx.example\nmax_age: 60\n";
        bad(
            &format!("version: STSv2\n{base}"),
            PolicyError::BadVersion("STSv2".into()),
        );
        bad(
            &format!("version: stsv1\n{base}"),
            PolicyError::BadVersion("stsv1".into()),
        );
        bad(
            "version: STSv1\nmode: Enforce\nmx: mx.example\nmax_age: 60\n",
            PolicyError::BadMode("Enforce".into()),
        );
        bad(
            "version: STSv1\nmode: strict\nmx: mx.example\nmax_age: 60\n",
            PolicyError::BadMode("strict".into()),
        );
    }

    #[test]
    fn duplicates() {
        let dup = |key: &str| PolicyError::Duplicate(key.to_string());
        bad(
            "version: STSv1\nversion: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n",
            dup("version"),
        );
        bad(
            "version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 60\n",
            dup("mode"),
        );
        bad(
            "version: STSv1\nmode: enforce\nmode: enforce\nmx: a.example\nmax_age: 60\n",
            dup("mode"),
        );
        bad(
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\nmax_age: 60\n",
            dup("max_age"),
        );
    }

    #[test]
    fn garbage_lines() {
        let syntax = |line: usize, text: &str| PolicyError::Syntax {
            line,
            text: text.to_string(),
        };
        bad(
            "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 60\n",
            syntax(2, "mode enforce"),
        );
        bad(
            "<html>\nversion: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n",
            syntax(1, "<html>"),
        );
        // RFC 8461 §3.2: no whitespace between a field name and its colon.
        bad(
            "version: STSv1\nmode : enforce\nmx: a.example\nmax_age: 60\n",
            syntax(2, "mode : enforce"),
        );
        bad(
            "version: STSv1\n: enforce\nmx: a.example\nmax_age: 60\n",
            syntax(2, ": enforce"),
        );
    }

    #[test]
    fn mx_patterns_are_normalized() {
        let parse = |v: &str| MxPattern::parse(v).map(|p| p.0);
        assert_eq!(parse("MX.Example.COM."), Ok("mx.example.com".into()));
        assert_eq!(parse("*.Example.com"), Ok("*.example.com".into()));
        assert_eq!(
            parse("mx.bücher.example"),
            Ok("mx.xn--bcher-kva.example".into())
        );
        assert_eq!(
            parse("*.BÜCHER.example."),
            Ok("*.xn--bcher-kva.example".into())
        );
        assert_eq!(
            parse("mx.xn--bcher-kva.example"),
            Ok("mx.xn--bcher-kva.example".into())
        );
        for bad_mx in [
            "",
            "*",
            "*.",
            "a..b",
            "*.*.example",
            "mx.*.example",
            "a b.example",
        ] {
            assert_eq!(
                parse(bad_mx),
                Err(PolicyError::BadMx(bad_mx.into())),
                "{bad_mx:?}"
            );
        }
        bad(
            "version: STSv1\nmode: enforce\nmx: -bad.example\nmax_age: 60\n",
            PolicyError::BadMx("-bad.example".into()),
        );
    }

    #[test]
    fn wildcard_matches_one_label() {
        let policy = Policy {
            mode: Mode::Enforce,
            mx: mx(&["*.b.example", "mx.a.example"]),
            max_age: 60,
        };
        let hit = |host: &str| policy.matching(host).map(|p| p.0.as_str());
        assert_eq!(hit("sub.b.example"), Some("*.b.example"));
        assert_eq!(hit("SUB.B.Example."), Some("*.b.example"));
        assert_eq!(hit("b.example"), None);
        assert_eq!(hit("x.sub.b.example"), None);
        assert_eq!(hit(".b.example"), None);
        assert_eq!(hit("mx.a.example"), Some("mx.a.example"));
        assert_eq!(hit("MX.A.EXAMPLE."), Some("mx.a.example"));
        assert_eq!(hit("x.mx.a.example"), None);
        assert_eq!(hit("a.example"), None);
        assert_eq!(hit("mx.a.example.evil"), None);
    }

    #[test]
    fn international_hosts_match_as_a_labels() {
        let policy = Policy::parse(
            "version: STSv1\nmode: enforce\nmx: *.bücher.example\nmx: mx.xn--caf-dma.example\n\
             max_age: 60\n",
        )
        .expect("valid policy");
        assert!(policy.matching("mx1.xn--bcher-kva.example").is_some());
        assert!(policy.matching("mx1.BÜCHER.example").is_some());
        assert!(policy.matching("mx.café.example").is_some());
        assert!(policy.matching("mx.cafe.example").is_none());
    }
}
