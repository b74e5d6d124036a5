//! The delivery status filter: Postfix's `smtp_delivery_status_filter` with a `pcre:` table
//! (postconf(5), pcre_table(5)), so that rules written for Postfix work unchanged.
//!
//! **The Postfix model.** After a delivery attempt fails, Postfix's SMTP client looks up one
//! string — the enhanced status code (RFC 3463), one space, and the text that describes the
//! failure, e.g. `4.7.5 Server certificate not verified` (no three-digit SMTP code) — in the
//! filter's tables. The first rule whose regular expression matches gives the result, with
//! `$1`, `${1}` … replaced by the pattern's groups. A result is a new enhanced status code,
//! optionally followed by a new text; it replaces the recipient's status. Its class decides
//! what happens next (RFC 3463 §3.1): 4.X.X "persistent transient failure" is retried, 5.X.X
//! "permanent failure" bounces at once. That is the whole point of the feature here: a 4.7.x
//! TLS failure (DESIGN.md's status table) becomes a 5.7.x bounce instead of sitting in the
//! queue for `queue.max_lifetime` — only where the operator's file says so.
//!
//! **What mxguard adds to the model**, each where Postfix is silent or does the same:
//! - A result that is not a valid enhanced status code is ignored with a warning, and the
//!   original status stands (Postfix: "bad status code in lookup result").
//! - The filter sees failures only, and a `2.X.X` result for a failure is ignored with a
//!   warning: a filter may never turn a failure into a success (Postfix refuses to swap
//!   success and failure classes too).
//! - The three-digit reply code follows the new class: its first digit is replaced and its
//!   last two are kept (`451` → `551`, `421` → `521`, `550` → `450`), so the reply stays one
//!   the original server (or mxguard) could have given, with the detail it gave.
//! - The file is parsed once, at start-up; a bad line is an error naming the line, never a
//!   skipped rule (Postfix warns and skips, which silently weakens an operator's policy).
//!
//! **Table syntax** (pcre_table(5)): one rule per logical line, `/pattern/flags result`, where
//! the first character is the delimiter (any non-alphanumeric one; a backslash escapes it
//! inside the pattern) and a leading `!` negates the match. Blank lines and lines whose first
//! non-blank character is `#` are ignored; a line that starts with whitespace continues the
//! previous one. Patterns match case-insensitively unless the `i` flag toggles that off; `m`,
//! `s` and `x` toggle multi-line, dot-matches-newline and extended syntax as in PCRE. The
//! patterns are compiled by the `regex` crate, whose syntax covers what status filters use
//! (`\d`, `\S`, `\.`, classes, groups, anchors) but has no look-around or back-references:
//! a pattern that needs them is rejected at start-up. `if`/`endif` blocks are not supported.

use crate::reply::{EnhancedCode, Reply};
use regex::{Regex, RegexBuilder};
use std::fmt;
use std::path::{Path, PathBuf};

/// An ordered list of rules; the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct StatusFilter {
    rules: Vec<Rule>,
}

/// One `/pattern/flags result` line.
#[derive(Debug, Clone)]
struct Rule {
    /// The line number (1-based) where the rule's logical line starts, for warnings.
    line: usize,
    regex: Regex,
    /// `!/pattern/`: the rule applies when the pattern does not match.
    negated: bool,
    result: Template,
}

/// A result with `$n` references to the pattern's groups.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Group(usize),
}

/// Why the filter file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} line {line}: {error}", path.display())]
    Rule {
        path: PathBuf,
        line: usize,
        error: RuleError,
    },
}

/// Why one rule cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("no pattern after \"!\"")]
    NoPattern,
    #[error("{0:?} blocks are not supported; write each rule on its own")]
    Conditional(String),
    #[error("unknown directive {0:?}: a rule starts with a delimiter such as \"/\"")]
    UnknownDirective(String),
    #[error("no closing delimiter {0:?}")]
    NoClosingDelimiter(char),
    #[error("unknown flag {0:?} (known: i, m, s, x)")]
    UnknownFlag(char),
    #[error("bad regular expression: {0}")]
    Regex(String),
    #[error("no result after the pattern")]
    NoResult,
    #[error("${0} refers to a group the pattern does not have (it has {1})")]
    NoSuchGroup(usize, usize),
    #[error("${{{0}}} is not a group number (write $$ for a literal \"$\")")]
    NotAGroup(String),
    #[error("unterminated \"${{\" or \"$(\" in the result")]
    Unterminated,
    #[error("a negated pattern has no groups for the result to use")]
    NegatedWithGroups,
}

/// What the filter did with one status.
#[derive(Debug, Clone, PartialEq)]
pub enum Filtered {
    /// No rule matched (or the reply is a success, which is never filtered).
    Unchanged,
    /// The rule at `line` replaced the status.
    Replaced { line: usize, reply: Reply },
    /// The rule at `line` matched, but its `result` cannot be used; the status stands.
    Ignored {
        line: usize,
        result: String,
        why: Unusable,
    },
}

/// Why a rule's result is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// It does not begin with `2.X.X`, `4.X.X` or `5.X.X`.
    NotAStatus,
    /// It would turn a failure into a success.
    Success,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unusable::NotAStatus => "does not begin with an enhanced status code",
            Unusable::Success => "would turn a failure into a success",
        })
    }
}

impl StatusFilter {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<StatusFilter, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        StatusFilter::parse(&text).map_err(|(line, error)| LoadError::Rule {
            path: path.to_path_buf(),
            line,
            error,
        })
    }

    /// Parses a table's text; an error comes with the line number where its rule starts.
    pub fn parse(text: &str) -> Result<StatusFilter, (usize, RuleError)> {
        let mut rules = Vec::new();
        for (line, rule) in logical_lines(text) {
            let (regex, negated, result) = Rule::parse(&rule).map_err(|e| (line, e))?;
            rules.push(Rule {
                line,
                regex,
                negated,
                result,
            });
        }
        Ok(StatusFilter { rules })
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first matching rule's line and expanded result for a query string, as Postfix's
    /// `postmap -q QUERY pcre:FILE` would print it.
    pub fn lookup(&self, query: &str) -> Option<(usize, String)> {
        self.rules.iter().find_map(|rule| {
            let result = match (rule.regex.captures(query), rule.negated) {
                (Some(groups), false) => rule.result.expand(&groups),
                (None, true) => rule.result.expand_plain(),
                _ => return None,
            };
            Some((rule.line, result))
        })
    }

    /// Runs a reply through the rules (Postfix's smtp_delivery_status_filter): the query is
    /// the enhanced status code, a space and the text.
    pub fn apply(&self, reply: &Reply) -> Filtered {
        if reply.is_positive() || self.rules.is_empty() {
            return Filtered::Unchanged;
        }
        let text = reply.text.replace(['\r', '\n'], " ");
        let query = format!("{} {}", reply.status(), text);
        let Some((line, result)) = self.lookup(&query) else {
            return Filtered::Unchanged;
        };
        let ignored = |why| Filtered::Ignored {
            line,
            result: result.clone(),
            why,
        };
        let Some((status, new_text)) = parse_status(&result) else {
            return ignored(Unusable::NotAStatus);
        };
        if status.class == 2 {
            return ignored(Unusable::Success);
        }
        let text = if new_text.is_empty() {
            reply.text.clone()
        } else {
            new_text.to_string()
        };
        Filtered::Replaced {
            line,
            reply: Reply {
                code: code_for_class(reply.code, status.class),
                enhanced: Some(status),
                text,
            },
        }
    }

    /// [`StatusFilter::apply`] for the queue: the reply to use from now on, with a warning
    /// logged when a rule's result had to be ignored.
    pub fn filter(&self, reply: Reply) -> Reply {
        match self.apply(&reply) {
            Filtered::Unchanged => reply,
            Filtered::Replaced { line, reply: new } => {
                tracing::debug!("status filter line {line}: \"{reply}\" becomes \"{new}\"");
                new
            }
            Filtered::Ignored { line, result, why } => {
                tracing::warn!(
                    "status filter line {line}: result \"{result}\" for \"{reply}\" {why}; \
                     the original status stands"
                );
                reply
            }
        }
    }
}

/// The three-digit code for a reply whose class became `class`: the first digit replaced, the
/// other two kept (451 → 551). A code that is no failure code gets the class's generic one.
fn code_for_class(code: u16, class: u8) -> u16 {
    let class = u16::from(class);
    if (400..600).contains(&code) {
        class * 100 + code % 100
    } else {
        class * 100 + 50
    }
}

/// `[245].\d{1,3}.\d{1,3}` at the start of a result, followed by the end or whitespace;
/// returns the code and the text after it.
fn parse_status(result: &str) -> Option<(EnhancedCode, &str)> {
    let end = result
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(result.len());
    let mut parts = result[..end].split('.');
    let mut number = |max_len: usize| -> Option<u16> {
        let part = parts.next()?;
        if part.is_empty() || part.len() > max_len || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let class = number(1)?;
    let subject = number(3)?;
    let detail = number(3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    let class = u8::try_from(class).ok()?;
    Some((
        EnhancedCode::new(class, subject, detail),
        result[end..].trim(),
    ))
}

/// pcre_table(5): blank lines and `#` comment lines are skipped; a line that starts with
/// whitespace continues the logical line before it. Each logical line comes with the number
/// of its first physical line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let continues = trimmed.len() != raw.len();
        match lines.last_mut() {
            Some((_, logical)) if continues => logical.push_str(raw),
            // A continuation with nothing to continue starts a logical line of its own.
            _ => lines.push((i + 1, trimmed.to_string())),
        }
    }
    for (_, l) in &mut lines {
        l.truncate(l.trim_end().len());
    }
    lines
}

impl Rule {
    /// Parses one logical line (already trimmed): `[!]/pattern/flags result`.
    fn parse(line: &str) -> Result<(Regex, bool, Template), RuleError> {
        // pcre_table(5): any number of "!" negate the match, each toggling it.
        let mut negated = false;
        let mut rest = line;
        loop {
            rest = rest.trim_start();
            match rest.strip_prefix('!') {
                Some(r) => {
                    negated = !negated;
                    rest = r;
                }
                None => break,
            }
        }
        let Some(delimiter) = rest.chars().next() else {
            return Err(RuleError::NoPattern);
        };
        if delimiter.is_alphanumeric() {
            // Postfix reads an alphanumeric start as a directive: `if`, `endif`.
            let word: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
            return Err(match word.to_ascii_lowercase().as_str() {
                "if" | "endif" => RuleError::Conditional(word),
                _ => RuleError::UnknownDirective(word),
            });
        }
        let body = &rest[delimiter.len_utf8()..];
        let close =
            closing_delimiter(body, delimiter).ok_or(RuleError::NoClosingDelimiter(delimiter))?;
        let pattern = &body[..close];
        let after = &body[close + delimiter.len_utf8()..];
        let flags_end = after.find(char::is_whitespace).unwrap_or(after.len());
        let mut builder = RegexBuilder::new(pattern);
        // pcre_table(5): matching is case-insensitive unless the `i` flag toggles it.
        let (mut caseless, mut multi_line, mut dot_all, mut extended) = (true, false, false, false);
        for flag in after[..flags_end].chars() {
            match flag {
                'i' => caseless = !caseless,
                'm' => multi_line = !multi_line,
                's' => dot_all = !dot_all,
                'x' => extended = !extended,
                other => return Err(RuleError::UnknownFlag(other)),
            }
        }
        let regex = builder
            .case_insensitive(caseless)
            .multi_line(multi_line)
            .dot_matches_new_line(dot_all)
            .ignore_whitespace(extended)
            .build()
            .map_err(|e| RuleError::Regex(one_line(&e.to_string())))?;
        let result = after[flags_end..].trim();
        if result.is_empty() {
            return Err(RuleError::NoResult);
        }
        let template = Template::parse(result)?;
        let groups = regex.captures_len() - 1;
        for piece in &template.0 {
            if let Piece::Group(n) = piece {
                if negated {
                    return Err(RuleError::NegatedWithGroups);
                }
                if *n > groups {
                    return Err(RuleError::NoSuchGroup(*n, groups));
                }
            }
        }
        Ok((regex, negated, template))
    }
}

/// Where the pattern ends: the first unescaped `delimiter` (a backslash escapes the character
/// after it, which stays in the pattern: `\/` is a literal `/` to the regex too).
fn closing_delimiter(body: &str, delimiter: char) -> Option<usize> {
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next()?;
        } else if c == delimiter {
            return Some(i);
        }
    }
    None
}

/// The regex crate's errors span several lines (the pattern, a caret, the reason).
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Template {
    /// `$n`, `${n}` and `$(n)` name group n; `$$` is a `$`; any other `$` is itself.
    fn parse(text: &str) -> Result<Template, RuleError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, tail) = match after.chars().next() {
                Some('$') => {
                    literal.push('$');
                    rest = &after[1..];
                    continue;
                }
                Some(open @ ('{' | '(')) => {
                    let close = if open == '{' { '}' } else { ')' };
                    let end = after.find(close).ok_or(RuleError::Unterminated)?;
                    (&after[1..end], &after[end + 1..])
                }
                Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
                _ => {
                    literal.push('$');
                    rest = after;
                    continue;
                }
            };
            let n: usize = match name.bytes().all(|b| b.is_ascii_digit()) {
                true if !name.is_empty() => name
                    .parse()
                    .map_err(|_| RuleError::NotAGroup(name.to_string()))?,
                _ => return Err(RuleError::NotAGroup(name.to_string())),
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Group(n));
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    /// The result with each group's text (a group that did not take part is empty).
    fn expand(&self, groups: &regex::Captures<'_>) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Group(n) => groups.get(*n).map_or("", |m| m.as_str()),
            })
            .collect()
    }

    /// The result of a negated rule, which has no groups.
    fn expand_plain(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Group(_) => "",
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
