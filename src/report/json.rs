//! The TLS-RPT report (RFC 8460 §4): one JSON document per reporting period and policy domain.
//!
//! A report says who sent it (`organization-name`, `contact-info`, `report-id`), which period it
//! covers (`date-range`), and, for each policy the sender applied to the domain (`policies`), how
//! many TLS sessions succeeded and failed and why the failures failed (`failure-details`). The
//! structs here serialize to exactly the RFC's field names; [`Report::gzip`] is the form it
//! travels in (§5.1) and [`Report::file_name`] the name it travels under (§5.1). [`check_schema`]
//! holds a JSON document to the RFC's shape, strictly, for our own tests and the integration
//! tests.

use std::io::Write;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A TLS-RPT aggregate report (RFC 8460 §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// The sending organization, as the receiving domain's operator would recognise it.
    pub organization_name: String,
    /// The period whose sessions are counted.
    pub date_range: DateRange,
    /// Where the receiving domain can ask about the report: an address or a URL.
    pub contact_info: String,
    /// Identifies this report among the sender's reports; also the source of the file name's
    /// unique-id.
    pub report_id: String,
    /// One entry per policy applied to the policy domain during the period.
    pub policies: Vec<PolicyReport>,
}

/// The reporting period (RFC 8460 §4.1): RFC 3339 date-times, written `YYYY-MM-DDTHH:MM:SSZ`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    /// The first second of the period. Sub-seconds are not written.
    #[serde(with = "utc_seconds")]
    pub start_datetime: OffsetDateTime,
    /// The last second of the period (RFC 8460 §4.4's example ends a day at `23:59:59Z`).
    #[serde(with = "utc_seconds")]
    pub end_datetime: OffsetDateTime,
}

/// The results under one policy (RFC 8460 §4.1, an element of `policies`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    /// The policy that was applied.
    pub policy: Policy,
    /// Sessions counted under it.
    pub summary: Summary,
    /// The failed sessions, grouped by result and by where they failed; left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureDetail>,
}

/// The policy a sender applied (RFC 8460 §4.1, §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    /// DANE, MTA-STS, or neither.
    pub policy_type: PolicyType,
    /// The policy as text (§4.2): one TLSA record's presentation RDATA per element, or one
    /// MTA-STS policy line per element; `[]` when there is none (`no-policy-found`, or a
    /// policy that could not be fetched). Always written: receivers' parsers expect it.
    #[serde(default)]
    pub policy_string: Vec<String>,
    /// The domain the policy belongs to, in A-labels.
    pub policy_domain: String,
    /// The MX hosts the policy covers (for MTA-STS, the policy's `mx` patterns); `[]` when
    /// none are known. Always written.
    #[serde(default)]
    pub mx_host: Vec<String>,
}

/// RFC 8460 §4.1 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    /// A DANE TLSA policy (RFC 6698, RFC 7672).
    Tlsa,
    /// An MTA-STS policy (RFC 8461).
    Sts,
    /// Neither a DANE nor an MTA-STS policy was found.
    NoPolicyFound,
}

/// Session counts under one policy (RFC 8460 §4.1 `summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    /// Sessions that negotiated TLS as the policy required.
    pub total_successful_session_count: u64,
    /// Sessions that did not; each is also counted in one [`FailureDetail`].
    pub total_failure_session_count: u64,
}

/// One kind of failure at one place (RFC 8460 §4.3): sessions with the same result type between
/// the same sending and receiving addresses are counted together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    /// One of RFC 8460 §4.3's result types (`starttls-not-supported`, …). A string here: the
    /// delivery side owns the enum and maps its failures to these names.
    pub result_type: String,
    /// Our address on the failed session. Unknown for a failure before any connection (such as
    /// `sts-policy-fetch-error`), and then left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    /// The MX host we were connecting to; left out for a failure before any MX was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    /// The name the MX host gave in its greeting or EHLO reply; left out when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_helo: Option<String>,
    /// The MX host's address we connected to; left out for a failure before any connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    /// How many sessions failed this way.
    pub failed_session_count: u64,
    /// A URI pointing at more about the failure; left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_information: Option<String>,
    /// A code for the failure's cause beyond the result type (e.g. a TLS library's error
    /// name); left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason_code: Option<String>,
}

/// RFC 8460 §4.3 (with §4.3.1 and §4.3.2): every `result-type` a report may carry.
pub const RESULT_TYPES: [&str; 11] = [
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

impl Report {
    /// The report as JSON (RFC 8460 §4, `application/tlsrpt+json`).
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers, IP addresses and our own date writer: nothing here can fail to
        // serialize, so a failure would be a bug in this file, not bad input.
        serde_json::to_vec(self).expect("a Report always serializes")
    }

    /// The report as gzip'd JSON (RFC 8460 §5.1: `application/tlsrpt+gzip`), default level.
    pub fn gzip(&self) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing into a Vec cannot fail; the io::Result is only the trait's shape.
        encoder
            .write_all(&self.to_json())
            .and_then(|()| encoder.finish())
            .expect("gzip into memory cannot fail")
    }

    /// The report's file name (RFC 8460 §5.1):
    /// `submitter!policy-domain!begin-timestamp!end-timestamp!unique-id.json.gz`, timestamps in
    /// unix seconds, unique-id from the report-id. `submitter` is our domain (the one in
    /// `contact-info`), both domains in A-labels.
    pub fn file_name(&self, submitter: &str, policy_domain: &str) -> String {
        let begin = unix_seconds(self.date_range.start_datetime);
        let end = unix_seconds(self.date_range.end_datetime);
        let unique = unique_id(&self.report_id);
        let unique = if unique.is_empty() {
            // RFC 8460 §5.1: the unique-id is optional; an empty one is not allowed.
            String::new()
        } else {
            format!("!{unique}")
        };
        format!(
            "{}!{}!{begin}!{end}{unique}.json.gz",
            file_domain(submitter),
            file_domain(policy_domain)
        )
    }
}

/// RFC 8460 §5.1 `1*DIGIT`: seconds since the epoch, never negative.
fn unix_seconds(at: OffsetDateTime) -> i64 {
    at.unix_timestamp().max(0)
}

/// RFC 8460 §5.1: `unique-id = 1*(ALPHA / DIGIT)`: the report-id's letters and digits. Anything
/// else would break the name's `!`-separated fields or its `.json.gz` suffix, or reach a file
/// system or a MIME parameter as a path or a quote.
fn unique_id(report_id: &str) -> String {
    report_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// A domain as a file-name field: the characters of an A-label domain, anything else (which a
/// correct caller never passes) as `-`, and no trailing root dot.
fn file_domain(domain: &str) -> String {
    domain
        .trim_end_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 §5.6 `date-time`, always UTC, no fraction), the form of
/// RFC 8460 §4.4's example and the one every report reader accepts.
mod utc_seconds {
    use super::{format_datetime, parse_datetime};
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_datetime(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        parse_datetime(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not YYYY-MM-DDTHH:MM:SSZ"))
        })
    }
}

/// Writes `at` in UTC as `YYYY-MM-DDTHH:MM:SSZ`. RFC 3339 years have four digits; a year outside
/// 0000-9999 (which no clock gives) is written as the nearest one rather than as a malformed
/// date.
fn format_datetime(at: OffsetDateTime) -> String {
    let utc = at.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        utc.year().clamp(0, 9999),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    )
}

/// Reads exactly `YYYY-MM-DDTHH:MM:SSZ` (a real calendar date and time; no leap second, no
/// fraction, no other offset).
fn parse_datetime(text: &str) -> Option<OffsetDateTime> {
    let b = text.as_bytes();
    let shape_ok = b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u16>().ok();
    let year = i32::from(number(0..4)?);
    let month = Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    let day = u8::try_from(number(8..10)?).ok()?;
    let hour = u8::try_from(number(11..13)?).ok()?;
    let minute = u8::try_from(number(14..16)?).ok()?;
    let second = u8::try_from(number(17..19)?).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let time = Time::from_hms(hour, minute, second).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

/// Holds a JSON document to RFC 8460 §4's report format, strictly: every required field present
/// with its JSON type, no field the RFC does not name, dates as `YYYY-MM-DDTHH:MM:SSZ` with the
/// start not after the end, counts as non-negative integers, `policy-type` and `result-type`
/// among the RFC's values, IP addresses that parse. The error names the offending field by its
/// path, e.g. `policies[0].failure-details[1].result-type`.
pub fn check_schema(json: &Value) -> Result<(), String> {
    let report = object(json, "report")?;
    only_fields(
        report,
        "report",
        &[
            "organization-name",
            "date-range",
            "contact-info",
            "report-id",
            "policies",
        ],
    )?;
    for name in ["organization-name", "contact-info", "report-id"] {
        string(required(report, "", name)?, name)?;
    }
    check_date_range(required(report, "", "date-range")?)?;
    let policies = array(required(report, "", "policies")?, "policies")?;
    if policies.is_empty() {
        return Err("policies: empty (a report covers at least one policy)".into());
    }
    for (i, policy) in policies.iter().enumerate() {
        check_policy_report(policy, &format!("policies[{i}]"))?;
    }
    Ok(())
}

fn check_date_range(value: &Value) -> Result<(), String> {
    let at = "date-range";
    let range = object(value, at)?;
    only_fields(range, at, &["start-datetime", "end-datetime"])?;
    let start = datetime(
        required(range, at, "start-datetime")?,
        "date-range.start-datetime",
    )?;
    let end = datetime(
        required(range, at, "end-datetime")?,
        "date-range.end-datetime",
    )?;
    if start > end {
        return Err("date-range: start-datetime is after end-datetime".into());
    }
    Ok(())
}

fn check_policy_report(value: &Value, at: &str) -> Result<(), String> {
    let entry = object(value, at)?;
    only_fields(entry, at, &["policy", "summary", "failure-details"])?;
    check_policy(required(entry, at, "policy")?, &format!("{at}.policy"))?;
    check_summary(required(entry, at, "summary")?, &format!("{at}.summary"))?;
    if let Some(details) = entry.get("failure-details") {
        let at = format!("{at}.failure-details");
        for (i, detail) in array(details, &at)?.iter().enumerate() {
            check_failure_detail(detail, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn check_policy(value: &Value, at: &str) -> Result<(), String> {
    let policy = object(value, at)?;
    only_fields(
        policy,
        at,
        &["policy-type", "policy-string", "policy-domain", "mx-host"],
    )?;
    let kind = string(
        required(policy, at, "policy-type")?,
        &format!("{at}.policy-type"),
    )?;
    if !matches!(kind, "tlsa" | "sts" | "no-policy-found") {
        return Err(format!(
            "{at}.policy-type: {kind:?} is not tlsa, sts or no-policy-found"
        ));
    }
    string(
        required(policy, at, "policy-domain")?,
        &format!("{at}.policy-domain"),
    )?;
    for name in ["policy-string", "mx-host"] {
        if let Some(list) = policy.get(name) {
            strings(list, &format!("{at}.{name}"))?;
        }
    }
    Ok(())
}

fn check_summary(value: &Value, at: &str) -> Result<(), String> {
    let summary = object(value, at)?;
    let names = [
        "total-successful-session-count",
        "total-failure-session-count",
    ];
    only_fields(summary, at, &names)?;
    for name in names {
        count(required(summary, at, name)?, &format!("{at}.{name}"))?;
    }
    Ok(())
}

fn check_failure_detail(value: &Value, at: &str) -> Result<(), String> {
    let detail = object(value, at)?;
    only_fields(
        detail,
        at,
        &[
            "result-type",
            "sending-mta-ip",
            "receiving-mx-hostname",
            "receiving-mx-helo",
            "receiving-ip",
            "failed-session-count",
            "additional-information",
            "failure-reason-code",
        ],
    )?;
    let result = string(
        required(detail, at, "result-type")?,
        &format!("{at}.result-type"),
    )?;
    if !RESULT_TYPES.contains(&result) {
        return Err(format!(
            "{at}.result-type: {result:?} is not an RFC 8460 §4.3 result type"
        ));
    }
    count(
        required(detail, at, "failed-session-count")?,
        &format!("{at}.failed-session-count"),
    )?;
    for name in ["sending-mta-ip", "receiving-ip"] {
        if let Some(ip) = detail.get(name) {
            let at = format!("{at}.{name}");
            let text = string(ip, &at)?;
            text.parse::<IpAddr>()
                .map_err(|_| format!("{at}: {text:?} is not an IP address"))?;
        }
    }
    for name in [
        "receiving-mx-hostname",
        "receiving-mx-helo",
        "additional-information",
        "failure-reason-code",
    ] {
        if let Some(text) = detail.get(name) {
            string(text, &format!("{at}.{name}"))?;
        }
    }
    Ok(())
}

/// The field `name` of `object` (at path `at`), which must be there.
fn required<'a>(object: &'a Map<String, Value>, at: &str, name: &str) -> Result<&'a Value, String> {
    object.get(name).ok_or_else(|| {
        if at.is_empty() {
            format!("{name}: missing")
        } else {
            format!("{at}.{name}: missing")
        }
    })
}

/// Rejects any field not in `allowed`: a misspelt name is a field the reader never sees.
fn only_fields(object: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), String> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(format!("{at}: unknown field {unknown:?}")),
        None => Ok(()),
    }
}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{at}: expected an object, found {}", kind(value)))
}

fn array<'a>(value: &'a Value, at: &str) -> Result<&'a Vec<Value>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("{at}: expected an array, found {}", kind(value)))
}

fn string<'a>(value: &'a Value, at: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{at}: expected a string, found {}", kind(value)))
}

fn strings(value: &Value, at: &str) -> Result<(), String> {
    for (i, element) in array(value, at)?.iter().enumerate() {
        string(element, &format!("{at}[{i}]"))?;
    }
    Ok(())
}

/// A non-negative integer: `3`, not `-1`, `3.0` or `"3"`.
fn count(value: &Value, at: &str) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| format!("{at}: expected a non-negative integer, found {value}"))
}

fn datetime(value: &Value, at: &str) -> Result<OffsetDateTime, String> {
    let text = string(value, at)?;
    parse_datetime(text).ok_or_else(|| format!("{at}: {text:?} is not YYYY-MM-DDTHH:MM:SSZ"))
}

/// The JSON type of `value`, for an error message.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Read;
    use time::macros::datetime;

    /// A report with one policy of each kind, every optional field used somewhere.
    fn sample() -> Report {
        Report {
            organization_name: "Example Sender".into(),
            date_range: DateRange {
                start_datetime: datetime!(2026-03-01 00:00:00 UTC),
                end_datetime: datetime!(2026-03-01 23:59:59 UTC),
            },
            contact_info: "tlsrpt@sender.example".into(),
            report_id: "2026-03-01T00:00:00Z_receiver.example".into(),
            policies: vec![
                PolicyReport {
                    policy: Policy {
                        policy_type: PolicyType::Sts,
                        policy_string: vec![
                            "version: STSv1".into(),
                            "mode: enforce".into(),
                            "mx: *.mx.receiver.example".into(),
                            "max_age: 604800".into(),
                        ],
                        policy_domain: "receiver.example".into(),
                        mx_host: vec!["*.mx.receiver.example".into()],
                    },
                    summary: Summary {
                        total_successful_session_count: 120,
                        total_failure_session_count: 3,
                    },
                    failure_details: vec![
                        FailureDetail {
                            result_type: "certificate-expired".into(),
                            sending_mta_ip: Some("192.0.2.10".parse().unwrap()),
                            receiving_mx_hostname: Some("a.mx.receiver.example".into()),
                            receiving_mx_helo: Some("a.mx.receiver.example".into()),
                            receiving_ip: Some("2001:db8::25".parse().unwrap()),
                            failed_session_count: 2,
                            additional_information: Some(
                                "https://sender.example/tlsrpt/why".into(),
                            ),
                            failure_reason_code: Some("CertificateExpired".into()),
                        },
                        FailureDetail {
                            result_type: "sts-policy-fetch-error".into(),
                            sending_mta_ip: None,
                            receiving_mx_hostname: None,
                            receiving_mx_helo: None,
                            receiving_ip: None,
                            failed_session_count: 1,
                            additional_information: None,
                            failure_reason_code: None,
                        },
                    ],
                },
                PolicyReport {
                    policy: Policy {
                        policy_type: PolicyType::Tlsa,
                        policy_string: vec!["3 1 1 0123456789ABCDEF".into()],
                        policy_domain: "receiver.example".into(),
                        mx_host: vec!["b.mx.receiver.example".into()],
                    },
                    summary: Summary {
                        total_successful_session_count: 0,
                        total_failure_session_count: 4,
                    },
                    failure_details: vec![FailureDetail {
                        result_type: "tlsa-invalid".into(),
                        sending_mta_ip: Some("192.0.2.10".parse().unwrap()),
                        receiving_mx_hostname: Some("b.mx.receiver.example".into()),
                        receiving_mx_helo: None,
                        receiving_ip: Some("198.51.100.7".parse().unwrap()),
                        failed_session_count: 4,
                        additional_information: None,
                        failure_reason_code: None,
                    }],
                },
                PolicyReport {
                    policy: Policy {
                        policy_type: PolicyType::NoPolicyFound,
                        policy_string: vec![],
                        policy_domain: "receiver.example".into(),
                        mx_host: vec![],
                    },
                    summary: Summary {
                        total_successful_session_count: 9,
                        total_failure_session_count: 0,
                    },
                    failure_details: vec![],
                },
            ],
        }
    }

    fn sample_value() -> Value {
        serde_json::from_slice(&sample().to_json()).unwrap()
    }

    /// `sample_value()` changed by `edit`, which must then fail `check_schema` with an error
    /// that mentions `expected`.
    #[track_caller]
    fn rejected(edit: impl FnOnce(&mut Value), expected: &str) {
        let mut value = sample_value();
        edit(&mut value);
        let error = check_schema(&value).unwrap_err();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }

    #[test]
    fn serializes_with_the_rfc_field_names() {
        let value = sample_value();
        assert_eq!(value["organization-name"], "Example Sender");
        assert_eq!(
            value["date-range"]["start-datetime"],
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(value["date-range"]["end-datetime"], "2026-03-01T23:59:59Z");
        assert_eq!(value["contact-info"], "tlsrpt@sender.example");
        assert_eq!(value["report-id"], "2026-03-01T00:00:00Z_receiver.example");
        let sts = &value["policies"][0];
        assert_eq!(sts["policy"]["policy-type"], "sts");
        assert_eq!(sts["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(sts["policy"]["policy-domain"], "receiver.example");
        assert_eq!(sts["policy"]["mx-host"], json!(["*.mx.receiver.example"]));
        assert_eq!(sts["summary"]["total-successful-session-count"], 120);
        assert_eq!(sts["summary"]["total-failure-session-count"], 3);
        let detail = &sts["failure-details"][0];
        assert_eq!(detail["result-type"], "certificate-expired");
        assert_eq!(detail["sending-mta-ip"], "192.0.2.10");
        assert_eq!(detail["receiving-mx-hostname"], "a.mx.receiver.example");
        assert_eq!(detail["receiving-mx-helo"], "a.mx.receiver.example");
        assert_eq!(detail["receiving-ip"], "2001:db8::25");
        assert_eq!(detail["failed-session-count"], 2);
        assert_eq!(
            detail["additional-information"],
            "https://sender.example/tlsrpt/why"
        );
        assert_eq!(detail["failure-reason-code"], "CertificateExpired");
        assert_eq!(value["policies"][1]["policy"]["policy-type"], "tlsa");
        assert_eq!(
            value["policies"][2]["policy"]["policy-type"],
            "no-policy-found"
        );
    }

    #[test]
    fn unknown_values_are_left_out() {
        let value = sample_value();
        let fetch_error = value["policies"][0]["failure-details"][1]
            .as_object()
            .unwrap();
        let mut names: Vec<&str> = fetch_error.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["failed-session-count", "result-type"]);
        let tlsa = value["policies"][1]["failure-details"][0]
            .as_object()
            .unwrap();
        assert!(!tlsa.contains_key("receiving-mx-helo"));
        assert!(!tlsa.contains_key("additional-information"));
        assert!(!tlsa.contains_key("failure-reason-code"));
        let none = value["policies"][2].as_object().unwrap();
        assert!(!none.contains_key("failure-details"));
        assert_eq!(
            none["policy"],
            json!({
                "policy-type": "no-policy-found",
                "policy-string": [],
                "policy-domain": "receiver.example",
                "mx-host": []
            })
        );
    }

    #[test]
    fn schema_accepts_what_we_write_and_round_trips() {
        let report = sample();
        let json = report.to_json();
        let value: Value = serde_json::from_slice(&json).unwrap();
        check_schema(&value).unwrap();
        let back: Report = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn dates_are_written_in_utc_without_fraction() {
        let at = datetime!(2026-03-01 02:30:15.75 +02:30);
        assert_eq!(format_datetime(at), "2026-03-01T00:00:15Z");
        assert_eq!(
            format_datetime(datetime!(999-01-02 03:04:05 UTC)),
            "0999-01-02T03:04:05Z"
        );
        assert_eq!(
            parse_datetime("2024-02-29T23:59:59Z"),
            Some(datetime!(2024-02-29 23:59:59 UTC))
        );
    }

    #[test]
    fn schema_rejects_missing_fields() {
        rejected(
            |v| {
                v.as_object_mut().unwrap().remove("report-id");
            },
            "report-id: missing",
        );
        rejected(
            |v| {
                v["date-range"]
                    .as_object_mut()
                    .unwrap()
                    .remove("end-datetime");
            },
            "date-range.end-datetime: missing",
        );
        rejected(
            |v| {
                v["policies"][0]["policy"]
                    .as_object_mut()
                    .unwrap()
                    .remove("policy-domain");
            },
            "policies[0].policy.policy-domain: missing",
        );
        rejected(
            |v| {
                v["policies"][1].as_object_mut().unwrap().remove("summary");
            },
            "policies[1].summary: missing",
        );
        rejected(
            |v| {
                v["policies"][2]["summary"]
                    .as_object_mut()
                    .unwrap()
                    .remove("total-failure-session-count");
            },
            "policies[2].summary.total-failure-session-count: missing",
        );
        rejected(
            |v| {
                v["policies"][0]["failure-details"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("failed-session-count");
            },
            "policies[0].failure-details[0].failed-session-count: missing",
        );
        rejected(|v| v["policies"] = json!([]), "policies: empty");
    }

    #[test]
    fn schema_rejects_wrong_types() {
        rejected(|v| *v = json!([]), "report: expected an object");
        rejected(
            |v| v["organization-name"] = json!(7),
            "organization-name: expected a string",
        );
        rejected(|v| v["policies"] = json!({}), "policies: expected an array");
        rejected(
            |v| v["date-range"] = json!("today"),
            "date-range: expected an object",
        );
        rejected(
            |v| v["policies"][0]["policy"]["policy-string"] = json!("version: STSv1"),
            "policies[0].policy.policy-string: expected an array",
        );
        rejected(
            |v| v["policies"][0]["policy"]["mx-host"] = json!([1]),
            "policies[0].policy.mx-host[0]: expected a string",
        );
        rejected(
            |v| v["policies"][0]["failure-details"] = json!({}),
            "policies[0].failure-details: expected an array",
        );
        rejected(
            |v| v["policies"][0]["failure-details"][0]["receiving-mx-helo"] = json!(null),
            "receiving-mx-helo: expected a string",
        );
    }

    #[test]
    fn schema_rejects_bad_counts() {
        for count in [json!(-1), json!(2.5), json!(3.0), json!("3"), json!(null)] {
            rejected(
                |v| v["policies"][0]["summary"]["total-successful-session-count"] = count,
                "total-successful-session-count: expected a non-negative integer",
            );
        }
        rejected(
            |v| v["policies"][1]["failure-details"][0]["failed-session-count"] = json!(-4),
            "failed-session-count: expected a non-negative integer",
        );
    }

    #[test]
    fn schema_rejects_bad_dates() {
        for date in [
            "2026-03-01 00:00:00Z",
            "2026-03-01T00:00:00+00:00",
            "2026-03-01T00:00:00.000Z",
            "2026-03-01T00:00:00z",
            "2026-03-01T00:00:00",
            "2026-3-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-03-01T24:00:00Z",
            "2026-03-01T23:59:60Z",
            "+2026-03-01T00:00:00Z",
            "2026-03-01T00:00:0١Z",
            "",
        ] {
            rejected(
                |v| v["date-range"]["start-datetime"] = json!(date),
                "date-range.start-datetime: ",
            );
        }
        rejected(
            |v| v["date-range"]["start-datetime"] = json!("2026-03-02T00:00:00Z"),
            "start-datetime is after end-datetime",
        );
        // The same strictness when reading a report back.
        let mut value = sample_value();
        value["date-range"]["end-datetime"] = json!("2026-03-01T23:59:59+00:00");
        assert!(serde_json::from_value::<Report>(value).is_err());
    }

    #[test]
    fn schema_rejects_unknown_names_and_values() {
        rejected(
            |v| {
                v["policies"][0]["failure-details"][0]["result-type"] = json!("certificate-revoked")
            },
            "policies[0].failure-details[0].result-type: \"certificate-revoked\" is not",
        );
        rejected(
            |v| {
                v["policies"][0]["failure-details"][0]["result-type"] =
                    json!("STARTTLS-NOT-SUPPORTED")
            },
            "is not an RFC 8460",
        );
        rejected(
            |v| v["policies"][1]["policy"]["policy-type"] = json!("dane"),
            "policies[1].policy.policy-type: \"dane\" is not",
        );
        rejected(
            |v| v["report_id"] = json!("x"),
            "report: unknown field \"report_id\"",
        );
        rejected(
            |v| v["policies"][0]["summary"]["total-sessions"] = json!(1),
            "policies[0].summary: unknown field \"total-sessions\"",
        );
        rejected(
            |v| v["policies"][0]["failure-details"][0]["receiving-mx"] = json!("x"),
            "policies[0].failure-details[0]: unknown field \"receiving-mx\"",
        );
        rejected(
            |v| v["policies"][0]["policy"]["policy-name"] = json!("x"),
            "policies[0].policy: unknown field",
        );
        rejected(
            |v| v["date-range"]["timezone"] = json!("UTC"),
            "date-range: unknown field",
        );
    }

    #[test]
    fn schema_rejects_bad_ip_addresses() {
        for ip in [
            "192.0.2",
            "2001:db8::25::1",
            "mx.example",
            "[2001:db8::25]",
            " 192.0.2.1",
        ] {
            rejected(
                |v| v["policies"][0]["failure-details"][0]["receiving-ip"] = json!(ip),
                "policies[0].failure-details[0].receiving-ip: ",
            );
        }
        rejected(
            |v| v["policies"][0]["failure-details"][0]["sending-mta-ip"] = json!(3221225994u64),
            "sending-mta-ip: expected a string",
        );
    }

    #[test]
    fn every_rfc_result_type_is_accepted() {
        for result in RESULT_TYPES {
            let mut value = sample_value();
            value["policies"][0]["failure-details"][0]["result-type"] = json!(result);
            check_schema(&value).unwrap();
        }
    }

    #[test]
    fn gzip_decodes_to_the_json() {
        let report = sample();
        let gz = report.gzip();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut json)
            .unwrap();
        assert_eq!(json, report.to_json());
    }

    #[test]
    fn file_name_follows_rfc_8460() {
        let report = sample();
        // 2026-03-01T00:00:00Z and 23:59:59Z in unix seconds.
        assert_eq!(
            report.file_name("mail.sender.example", "receiver.example"),
            "mail.sender.example!receiver.example!1772323200!1772409599!20260301T000000Zreceiverexample.json.gz"
        );
        let mut odd = report.clone();
        odd.report_id = "-_.!/ ".into();
        assert_eq!(
            odd.file_name("sender.example.", "a!b/c"),
            "sender.example!a-b-c!1772323200!1772409599.json.gz"
        );
        odd.report_id = "Report 7/3".into();
        let name = odd.file_name("sender.example", "receiver.example");
        assert!(name.ends_with("!Report73.json.gz"), "{name}");
        assert_eq!(name.matches('!').count(), 4);
    }
}
