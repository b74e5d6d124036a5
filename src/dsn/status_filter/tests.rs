//! The status filter: table syntax as pcre_table(5) reads it, lookups as `postmap -q` answers
//! them, and the filter as Postfix's smtp_delivery_status_filter applies it.

use super::*;

/// A table that must parse.
#[track_caller]
fn good(text: &str) -> StatusFilter {
    StatusFilter::parse(text).unwrap_or_else(|(line, e)| panic!("line {line}: {e}\n{text}"))
}

/// A table that must not parse: the line and error.
#[track_caller]
fn bad(text: &str) -> (usize, RuleError) {
    match StatusFilter::parse(text) {
        Ok(f) => panic!("parsed into {} rule(s): {text}", f.len()),
        Err(e) => e,
    }
}

/// What `postmap -q query` would print: the expanded result, or `None` for no match.
#[track_caller]
fn query(filter: &StatusFilter, q: &str) -> Option<String> {
    filter.lookup(q).map(|(_, result)| result)
}

fn failure(code: u16, status: &str) -> Reply {
    Reply::from_remote(code, status)
}

// --- syntax ------------------------------------------------------------------------------

#[test]
fn comments_and_blank_lines_are_skipped() {
    let f = good("# a comment\n\n   \n  # an indented comment\n/^4.7.5(.*)/ 5.7.5$1\n# end\n");
    assert_eq!(f.len(), 1);
    assert_eq!(f.rules[0].line, 5);
}

#[test]
fn a_line_starting_with_whitespace_continues_the_rule() {
    let f = good("/^4\\.7\\.5 (.*)/\n    5.7.5 hard: $1\n/^4/ 4.0.0 next\n");
    assert_eq!(f.len(), 2);
    assert_eq!(
        query(&f, "4.7.5 bad cert").as_deref(),
        Some("5.7.5 hard: bad cert")
    );
    assert_eq!(f.rules[1].line, 3);
    // The continuation's leading whitespace separates the pattern from the result.
    let f = good("/^4(.*)/\n\t5$1\n");
    assert_eq!(query(&f, "4.1.1 x").as_deref(), Some("5.1.1 x"));
}

#[test]
fn any_non_alphanumeric_delimiter() {
    for table in [
        "/^4(.*)/ 5$1",
        "|^4(.*)| 5$1",
        "%^4(.*)%i 5$1",
        ",^4(.*), 5$1",
    ] {
        assert_eq!(
            query(&good(table), "4.4.4 x").as_deref(),
            Some("5.4.4 x"),
            "{table}"
        );
    }
    // A line that starts with "#" is a comment in pcre_table(5), whatever follows.
    assert!(good("#^4(.*)# 5$1\n").is_empty());
}

#[test]
fn an_escaped_delimiter_stays_in_the_pattern() {
    let f = good("/^4\\.\\d+\\.\\d+ path a\\/b(.*)/ 5.0.0 slash$1\n");
    assert_eq!(
        query(&f, "4.0.0 path a/b!").as_deref(),
        Some("5.0.0 slash!")
    );
    let f = good("|^4 (a\\|b)| 5.0.0 $1\n");
    assert_eq!(query(&f, "4 a|b").as_deref(), Some("5.0.0 a|b"));
}

#[test]
fn negated_patterns_match_when_the_pattern_does_not() {
    let f = good("!/TLS/ 4.0.0 not about TLS\n");
    assert_eq!(
        query(&f, "4.4.1 refused").as_deref(),
        Some("4.0.0 not about TLS")
    );
    assert_eq!(query(&f, "4.7.5 TLS handshake"), None);
    assert!(
        !good("!!/TLS/ 5.0.0 x\n").rules[0].negated,
        "!! cancels out"
    );
    assert_eq!(bad("!/(TLS)/ 5.0.0 $1\n").1, RuleError::NegatedWithGroups);
}

#[test]
fn bad_lines_are_named_by_number() {
    let table = "# filter\n/^4.7.5(.*)/ 5.7.5$1\n\n/^4.7.4(.*)/ 5.7.4$1\n/^4(.*)\n";
    assert_eq!(bad(table), (5, RuleError::NoClosingDelimiter('/')));
    // A rule continued over lines is named by its first line.
    assert_eq!(
        bad("/^4(.*)/ 5$1\n/^4(\n  .*/ 5$1\n").0,
        2,
        "the error names the rule's first line"
    );
    assert_eq!(bad("/^4/\n").1, RuleError::NoResult);
    assert_eq!(bad("!\n").1, RuleError::NoPattern);
    assert_eq!(
        bad("replace /x/ y\n").1,
        RuleError::UnknownDirective("replace".into())
    );
}

#[test]
fn if_endif_blocks_are_refused_clearly() {
    let (line, e) = bad("/a/ 5.0.0 a\nif /^4/\n/x/ 5.0.0 x\nendif\n");
    assert_eq!((line, e.clone()), (2, RuleError::Conditional("if".into())));
    assert!(e.to_string().contains("not supported"), "{e}");
    assert_eq!(bad("endif\n").1, RuleError::Conditional("endif".into()));
}

#[test]
fn unknown_flags_are_refused() {
    assert_eq!(bad("/a/q 5.0.0 x\n").1, RuleError::UnknownFlag('q'));
    // PCRE flags Postfix knows but the regex crate cannot honour are refused too.
    assert_eq!(bad("/a/U 5.0.0 x\n").1, RuleError::UnknownFlag('U'));
    good("/a/imsx 5.0.0 x\n");
}

#[test]
fn bad_regular_expressions_are_refused_in_one_line() {
    let (line, e) = bad("\n/^4(.*/ 5$1\n");
    assert_eq!(line, 2);
    let RuleError::Regex(message) = &e else {
        panic!("{e:?}")
    };
    assert!(!message.contains('\n'), "{message}");
    // PCRE features the regex crate lacks are refused at start-up, not at the first lookup.
    assert!(matches!(
        bad("/^4(?=\\.7)/ 5.7.0 x\n").1,
        RuleError::Regex(_)
    ));
    assert!(matches!(bad("/(a)\\1/ 5.0.0 x\n").1, RuleError::Regex(_)));
}

#[test]
fn results_must_refer_to_existing_groups() {
    assert_eq!(bad("/^4(.*)/ 5$2\n").1, RuleError::NoSuchGroup(2, 1));
    assert_eq!(
        bad("/^4(.*)/ 5$one\n").1,
        RuleError::NotAGroup("one".into())
    );
    assert_eq!(bad("/^4(.*)/ 5${1\n").1, RuleError::Unterminated);
    assert_eq!(bad("/^4(.*)/ 5${}\n").1, RuleError::NotAGroup("".into()));
}

// --- substitution ------------------------------------------------------------------------

#[test]
fn substitutes_groups_in_every_form() {
    let f = good("/^(\\d)\\.(\\d+)\\.(\\d+) (.*)/ 5.${2}.$3 [$1] $(4) costs $$5 $ \n");
    assert_eq!(
        query(&f, "4.7.5 cert").as_deref(),
        Some("5.7.5 [4] cert costs $5 $")
    );
    // A group that took no part in the match is empty.
    let f = good("/^4(x)?(.*)/ 5$1$2\n");
    assert_eq!(query(&f, "4.1.1 y").as_deref(), Some("5.1.1 y"));
    // `${1}0` is group 1 then a zero; `$10` would be group 10.
    let f = good("/^4\\.(\\d)\\.(\\d)/ 5.${1}0.$2\n");
    assert_eq!(query(&f, "4.7.5").as_deref(), Some("5.70.5"));
}

// --- matching ----------------------------------------------------------------------------

#[test]
fn matching_is_case_insensitive_unless_i_toggles_it() {
    let f = good("/tls is required/ 5.7.0 hard\n");
    assert!(query(&f, "4.7.4 TLS is required, but …").is_some());
    let f = good("/tls is required/i 5.7.0 hard\n");
    assert!(query(&f, "4.7.4 TLS is required, but …").is_none());
    assert!(query(&f, "4.7.4 tls is required").is_some());
    let f = good("/tls/ii 5.7.0 hard\n");
    assert!(query(&f, "4.7.4 TLS").is_some(), "a second i toggles back");
}

#[test]
fn m_s_and_x_flags_behave_as_in_pcre() {
    assert!(query(&good("/a.b/ 5.0.0 x\n"), "4.0.0 a\nb").is_none());
    assert!(query(&good("/a.b/s 5.0.0 x\n"), "4.0.0 a\nb").is_some());
    assert!(query(&good("/^b/ 5.0.0 x\n"), "a\nb").is_none());
    assert!(query(&good("/^b/m 5.0.0 x\n"), "a\nb").is_some());
    assert!(query(&good("/^4 \\. 7/x 5.0.0 x\n"), "4.7.5").is_some());
}

#[test]
fn the_first_matching_rule_wins() {
    let f = good("/^4\\.7\\.5/ 5.7.5 first\n/^4/ 5.0.0 second\n/^4\\.7\\.5/ 5.7.5 third\n");
    assert_eq!(f.lookup("4.7.5 x"), Some((1, "5.7.5 first".into())));
    assert_eq!(f.lookup("4.4.1 x"), Some((2, "5.0.0 second".into())));
}

// --- applying results --------------------------------------------------------------------

#[test]
fn a_harder_class_changes_the_codes_first_digit_only() {
    let f = good("/^4(.*)/ 5$1\n");
    let cases = [
        (451, "4.7.5 Server certificate not verified", 551),
        (421, "4.4.2 closing", 521),
        (454, "4.7.0 TLS not available", 554),
        (450, "4.2.0 busy", 550),
    ];
    for (code, text, want) in cases {
        let Filtered::Replaced { reply, line } = f.apply(&failure(code, text)) else {
            panic!("{code} {text}");
        };
        assert_eq!(line, 1);
        assert_eq!(reply.code, want, "{code} {text}");
        assert_eq!(reply.to_string(), format!("{want} 5{}", &text[1..]));
        assert!(reply.is_permanent());
    }
}

#[test]
fn a_result_without_text_keeps_the_original_text() {
    let f = good("/^4\\.7\\.5/ 5.7.25\n");
    let Filtered::Replaced { reply, .. } = f.apply(&failure(451, "4.7.5 the words")) else {
        panic!()
    };
    assert_eq!(reply.to_string(), "551 5.7.25 the words");
}

#[test]
fn a_permanent_failure_can_be_softened() {
    let f = good("/^5\\.1\\.1 (.*)/ 4.1.1 $1 (retrying)\n");
    let Filtered::Replaced { reply, .. } = f.apply(&failure(550, "5.1.1 no such user")) else {
        panic!()
    };
    assert_eq!(reply.to_string(), "450 4.1.1 no such user (retrying)");
}

#[test]
fn replies_without_an_enhanced_code_are_queried_with_the_class_default() {
    let f = good("/^4\\.0\\.0 (.*)/ 5.0.0 $1\n");
    let Filtered::Replaced { reply, .. } = f.apply(&Reply::plain(451, "try again")) else {
        panic!()
    };
    assert_eq!(reply.to_string(), "551 5.0.0 try again");
}

#[test]
fn results_that_are_not_a_status_are_ignored() {
    for result in [
        "bounce it",
        "5.7",
        "6.7.5 x",
        "5.7.5x y",
        "5.1234.1 x",
        "5.+7.5 x",
        "05.7.5",
    ] {
        let f = good(&format!("/^4/ {result}\n"));
        let r = failure(451, "4.7.5 x");
        assert_eq!(
            f.apply(&r),
            Filtered::Ignored {
                line: 1,
                result: result.into(),
                why: Unusable::NotAStatus
            },
            "{result}"
        );
        assert_eq!(f.filter(r.clone()), r, "the original stands");
    }
}

#[test]
fn a_failure_never_becomes_a_success() {
    let f = good("/^4\\.7\\.5/ 2.0.0 fine really\n");
    let r = failure(451, "4.7.5 Server certificate not verified");
    assert!(matches!(
        f.apply(&r),
        Filtered::Ignored {
            why: Unusable::Success,
            ..
        }
    ));
    assert_eq!(f.filter(r.clone()), r);
}

#[test]
fn successes_are_never_filtered() {
    let f = good("/^2(.*)/ 5$1\n/.*/ 5.0.0 everything\n");
    let ok = Reply::from_remote(250, "2.0.0 Ok queued");
    assert_eq!(f.apply(&ok), Filtered::Unchanged);
}

#[test]
fn an_empty_filter_changes_nothing() {
    let f = StatusFilter::default();
    assert_eq!(f.apply(&failure(451, "4.7.5 x")), Filtered::Unchanged);
    assert!(good("# only comments\n").is_empty());
}

#[test]
fn load_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("status_filter");
    std::fs::write(&path, "# x\n/ok/ 5.0.0 x\n/^4(.*)/z 5$1\n").expect("write");
    let e = StatusFilter::load(&path).expect_err("bad flag");
    assert_eq!(
        e.to_string(),
        format!(
            "{} line 3: unknown flag 'z' (known: i, m, s, x)",
            path.display()
        )
    );
    let missing = dir.path().join("nope");
    let e = StatusFilter::load(&missing).expect_err("missing");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );
}

// --- the rules mxguard ships ---------------------------------------------------------------

/// deploy/status_filter, read as Postfix's pcre table reads it: each status text as mxguard
/// (in Postfix's wording) produces it, and what `postmap -q` prints for it ("" = no match).
#[test]
fn the_shipped_rules_behave_as_in_postfix() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/status_filter");
    let f = StatusFilter::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.len(), 3);
    let host = "mx.example.test[192.0.2.1]";
    let table: &[(String, Option<String>)] = &[
        (
            format!("4.7.4 TLS is required, but was not offered by host {host}"),
            Some(format!(
                "5.7.4 TLS is required, but was not offered by host {host}"
            )),
        ),
        (
            format!(
                "4.7.0 TLS is required, but host {host} refused to start TLS: 454 4.7.0 TLS not \
                 available"
            ),
            Some(format!(
                "5.7.0 TLS is required, but host {host} refused to start TLS: 454 4.7.0 TLS not \
                 available"
            )),
        ),
        (
            "4.7.5 Server certificate not verified".into(),
            Some("5.7.5 Server certificate not verified".into()),
        ),
        (
            "4.7.5 Server certificate not verified: certificate not valid for name".into(),
            Some("5.7.5 Server certificate not verified: certificate not valid for name".into()),
        ),
        (
            "4.7.5 Cannot start TLS: handshake failure".into(),
            Some("5.7.5 Cannot start TLS: handshake failure".into()),
        ),
        (
            "4.7.5 MX host mx.evil.test not authorized by MTA-STS policy for example.test".into(),
            Some(
                "5.7.5 MX host mx.evil.test not authorized by MTA-STS policy for example.test"
                    .into(),
            ),
        ),
        (
            format!("4.4.1 connect to {host}:25: Connection refused"),
            None,
        ),
        (
            "4.7.0 TLSA lookup error for mx.example.test:25".into(),
            None,
        ),
        (
            "4.4.3 MTA-STS policy lookup failed for example.test: TXT lookup failed: SERVFAIL"
                .into(),
            None,
        ),
        ("4.3.0 TLS client setup failed: no roots".into(), None),
        ("5.1.1 <bob@example.test>: user unknown".into(), None),
        ("5.7.5 already permanent".into(), None),
    ];
    for (input, want) in table {
        assert_eq!(&query(&f, input), want, "{input}");
    }
}

/// The same rules applied to replies: the class and the three-digit code follow the result.
#[test]
fn the_shipped_rules_harden_tls_failures_only() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/status_filter");
    let f = StatusFilter::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let hardened = f.filter(Reply::new(
        451,
        EnhancedCode::new(4, 7, 4),
        "TLS is required, but was not offered by host mx.example.test[192.0.2.1]",
    ));
    assert_eq!(
        hardened.to_string(),
        "551 5.7.4 TLS is required, but was not offered by host mx.example.test[192.0.2.1]"
    );
    for kept in [
        Reply::new(
            451,
            EnhancedCode::new(4, 7, 0),
            "TLSA lookup error for mx.example.test:25",
        ),
        Reply::new(
            451,
            EnhancedCode::new(4, 4, 3),
            "MTA-STS policy lookup failed",
        ),
        Reply::from_remote(451, "4.4.1 try later"),
        Reply::from_remote(550, "5.1.1 unknown"),
    ] {
        assert_eq!(f.filter(kept.clone()), kept);
    }
}
