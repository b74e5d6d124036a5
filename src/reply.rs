//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).
//!
//! Every failure in mxguard ends up as one of these: the reply we send a client, the reply a
//! remote server sent us, or the status we put in a DSN. Keeping them in one type means the
//! text an operator reads in a bounce is the text the log showed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EnhancedCode {
    /// 2 success, 4 persistent transient failure, 5 permanent failure.
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Parses `X.Y.Z` at the start of `text`; returns the code and the rest of the text.
    pub fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let end = text.find(|c: char| c.is_whitespace()).unwrap_or(text.len());
        let code = text.get(..end)?;
        let mut parts = code.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some((
            EnhancedCode::new(class, subject, detail),
            text[end..].trim_start(),
        ))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced code and free text (which may span
/// several lines, joined with `\n`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    pub text: String,
}

/// Permanent, transient or success: what the first digit of a reply means for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Positive,
    Transient,
    Permanent,
}

impl Reply {
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced code (greetings, HELO, replies of old servers).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// Builds a reply from a code and text that may begin with an enhanced code, as remote
    /// servers send it.
    pub fn from_remote(code: u16, text: &str) -> Self {
        match EnhancedCode::parse_prefix(text) {
            Some((enhanced, rest)) => Reply {
                code,
                enhanced: Some(enhanced),
                text: rest.to_string(),
            },
            None => Reply::plain(code, text),
        }
    }

    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 | 3 => Severity::Positive,
            4 => Severity::Transient,
            _ => Severity::Permanent,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::Positive
    }

    pub fn is_permanent(&self) -> bool {
        self.severity() == Severity::Permanent
    }

    /// The enhanced code to report in a DSN: the reply's own, or the generic one for its class
    /// (RFC 3463 §3.1: X.0.0 "other undefined status").
    pub fn status(&self) -> EnhancedCode {
        self.enhanced.unwrap_or_else(|| {
            let class = match self.severity() {
                Severity::Positive => 2,
                Severity::Transient => 4,
                Severity::Permanent => 5,
            };
            EnhancedCode::new(class, 0, 0)
        })
    }

    /// The wire form, CRLF-terminated, multi-line replies with `code-` continuation lines.
    pub fn to_wire(&self) -> String {
        let lines: Vec<&str> = if self.text.is_empty() {
            vec![""]
        } else {
            self.text.split('\n').collect()
        };
        let mut out = String::with_capacity(self.text.len() + 16 * lines.len());
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            match self.enhanced {
                Some(e) => out.push_str(&format!("{}{}{} {}\r\n", self.code, sep, e, line)),
                None => out.push_str(&format!("{}{}{}\r\n", self.code, sep, line)),
            }
        }
        out
    }
}

/// `550 5.1.1 text` on one line, as logs and `Diagnostic-Code` show it.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text.replace(['\r', '\n'], " ");
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, text),
            None => write!(f, "{} {}", self.code, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_enhanced_prefix() {
        let r = Reply::from_remote(550, "5.1.1 <bob@example.net>: user unknown");
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(r.text, "<bob@example.net>: user unknown");
        assert_eq!(r.to_string(), "550 5.1.1 <bob@example.net>: user unknown");
    }

    #[test]
    fn no_enhanced_code_means_class_default_status() {
        let r = Reply::from_remote(451, "try later");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.status().to_string(), "4.0.0");
        assert!(Reply::from_remote(250, "1.2.3.4 is not a code")
            .enhanced
            .is_none());
    }

    #[test]
    fn multiline_wire_form() {
        let r = Reply::new(250, EnhancedCode::new(2, 0, 0), "a\nb");
        assert_eq!(r.to_wire(), "250-2.0.0 a\r\n250 2.0.0 b\r\n");
        assert_eq!(Reply::plain(220, "hi").to_wire(), "220 hi\r\n");
    }
}
