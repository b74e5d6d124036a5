//! The operator's TLS choices in Postfix's terms: which protocol versions (`tls_protocols`,
//! `tls_mandatory_protocols`, with Postfix's value syntax), which cipher suites and which
//! key-exchange groups (`tls_cipher_suites`, `tls_groups`, by IANA name), and the rustls
//! configuration pieces they become.
//!
//! rustls implements TLS 1.2 and 1.3 only, with AEAD cipher suites and ephemeral key exchange
//! only: everything Postfix hardening guides switch off (SSLv2, SSLv3, TLS 1.0/1.1, export,
//! NULL, RC4, 3DES, CBC-SHA1, static RSA key exchange, weak DH) does not exist here. A setting
//! that asks for one of those is refused at start-up rather than silently ignored.

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use serde::{Deserialize, Deserializer};
use std::sync::Arc;

/// Protocol versions by Postfix's names, oldest first.
const VERSION_NAMES: [&str; 6] = ["SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"];
/// Index of the first version rustls implements (TLSv1.2).
const FIRST_IMPLEMENTED: usize = 4;

/// The TLS versions a session may use: a subset of {TLSv1.2, TLSv1.3}, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub tls12: bool,
    pub tls13: bool,
}

impl Default for Protocols {
    /// rustls's own: TLSv1.2 and TLSv1.3 (Postfix's `>=TLSv1.2`).
    fn default() -> Protocols {
        Protocols {
            tls12: true,
            tls13: true,
        }
    }
}

impl Protocols {
    /// Parses a Postfix protocol list (`smtp_tls_protocols` syntax): names separated by
    /// whitespace, commas or colons; `!NAME` excludes, `>=NAME` and `<=NAME` bound the range,
    /// plain names include only those. Empty: the default. Names are case-insensitive.
    ///
    /// The versions to choose from are the ones rustls has, TLSv1.2 and TLSv1.3: excluding an
    /// older one (`!SSLv3`, `!TLSv1`) is accepted and changes nothing, while asking for one
    /// (`TLSv1.1` in a list, `>=TLSv1`) is refused with the reason.
    pub fn parse(expr: &str) -> Result<Protocols, String> {
        let mut included: Option<[bool; 6]> = None;
        let mut excluded = [false; 6];
        let (mut low, mut high) = (FIRST_IMPLEMENTED, VERSION_NAMES.len() - 1);
        let mut obsolete = Vec::new();
        for word in expr
            .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
            .filter(|w| !w.is_empty())
        {
            if let Some(name) = word.strip_prefix(">=") {
                let i = version_index(name)?;
                if i < FIRST_IMPLEMENTED {
                    obsolete.push(word);
                }
                low = low.max(i);
            } else if let Some(name) = word.strip_prefix("<=") {
                high = high.min(version_index(name)?);
            } else if let Some(name) = word.strip_prefix('!') {
                excluded[version_index(name)?] = true;
            } else {
                let i = version_index(word)?;
                if i < FIRST_IMPLEMENTED {
                    obsolete.push(word);
                }
                included.get_or_insert([false; 6])[i] = true;
            }
        }
        if !obsolete.is_empty() {
            return Err(format!(
                "\"{expr}\" asks for {}, which rustls does not implement: TLS 1.1 and older are \
                 deprecated (RFC 8996) and mxguard never offers them, so no peer worth \
                 reaching is lost; write \">=TLSv1.2\"",
                obsolete.join(", ")
            ));
        }
        let allowed = |i: usize| {
            included.is_none_or(|inc| inc[i]) && !excluded[i] && (low..=high).contains(&i)
        };
        let protocols = Protocols {
            tls12: allowed(FIRST_IMPLEMENTED),
            tls13: allowed(FIRST_IMPLEMENTED + 1),
        };
        if !protocols.tls12 && !protocols.tls13 {
            return Err(format!(
                "\"{expr}\" allows no protocol: mxguard speaks TLSv1.2 and TLSv1.3"
            ));
        }
        Ok(protocols)
    }

    /// The rustls versions, newest first.
    pub fn versions(self) -> Vec<&'static SupportedProtocolVersion> {
        let mut v = Vec::new();
        if self.tls13 {
            v.push(&rustls::version::TLS13);
        }
        if self.tls12 {
            v.push(&rustls::version::TLS12);
        }
        v
    }

    /// `TLSv1.2 TLSv1.3`, for logs and `check-config`.
    pub fn describe(self) -> String {
        let mut names = Vec::new();
        if self.tls12 {
            names.push("TLSv1.2");
        }
        if self.tls13 {
            names.push("TLSv1.3");
        }
        names.join(" ")
    }
}

fn version_index(name: &str) -> Result<usize, String> {
    VERSION_NAMES
        .iter()
        .position(|v| v.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            format!(
                "unknown protocol \"{name}\" (known: {})",
                VERSION_NAMES.join(", ")
            )
        })
}

/// A list key written either as a TOML array or as one Postfix-style string (names separated
/// by whitespace, commas or colons).
#[derive(Deserialize)]
#[serde(untagged)]
enum Words {
    One(String),
    Many(Vec<String>),
}

impl Words {
    fn joined(self) -> String {
        match self {
            Words::One(s) => s,
            Words::Many(v) => v.join(" "),
        }
    }

    fn split(self) -> Vec<String> {
        self.joined()
            .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// `deserialize_with` for a protocol key: the error names the key (serde_path_to_error).
pub fn protocols<'de, D: Deserializer<'de>>(d: D) -> Result<Protocols, D::Error> {
    Protocols::parse(&Words::deserialize(d)?.joined()).map_err(serde::de::Error::custom)
}

/// Cipher suites by IANA name, in the order given (the order of preference); `None`: the
/// provider's default list.
#[derive(Debug, Clone, Default)]
pub struct CipherSuites(pub Option<Vec<SupportedCipherSuite>>);

/// Key-exchange groups by IANA name, in the order given (the client offers a key share for the
/// first); `None`: the provider's default (X25519MLKEM768 first).
#[derive(Debug, Clone, Default)]
pub struct KxGroups(pub Option<Vec<&'static dyn SupportedKxGroup>>);

/// `deserialize_with` for `tls_cipher_suites`.
pub fn cipher_suites<'de, D: Deserializer<'de>>(d: D) -> Result<CipherSuites, D::Error> {
    let names = Words::deserialize(d)?.split();
    let mut suites = Vec::with_capacity(names.len());
    for name in &names {
        let suite = policy_cache::crypto::ALL_CIPHER_SUITES
            .iter()
            .find(|s| suite_matches(s, name))
            .ok_or_else(|| serde::de::Error::custom(unknown_suite(name)))?;
        if !suites.contains(suite) {
            suites.push(*suite);
        }
    }
    if suites.is_empty() {
        return Err(serde::de::Error::custom("names no cipher suite"));
    }
    Ok(CipherSuites(Some(suites)))
}

/// `deserialize_with` for `tls_groups`.
pub fn kx_groups<'de, D: Deserializer<'de>>(d: D) -> Result<KxGroups, D::Error> {
    let names = Words::deserialize(d)?.split();
    let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::with_capacity(names.len());
    for name in &names {
        let group = policy_cache::crypto::ALL_KX_GROUPS
            .iter()
            .find(|g| group_matches(**g, name))
            .ok_or_else(|| serde::de::Error::custom(unknown_group(name)))?;
        if !groups.iter().any(|g| g.name() == group.name()) {
            groups.push(*group);
        }
    }
    if groups.is_empty() {
        return Err(serde::de::Error::custom("names no key-exchange group"));
    }
    Ok(KxGroups(Some(groups)))
}

/// The IANA name of a suite (`TLS_AES_128_GCM_SHA256`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`).
/// rustls writes TLS 1.3 suites as `TLS13_…`; both spellings are accepted.
pub fn suite_name(suite: &SupportedCipherSuite) -> String {
    let name = suite.suite().as_str().unwrap_or("unknown");
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name.to_string(),
    }
}

fn suite_matches(suite: &SupportedCipherSuite, name: &str) -> bool {
    let rustls_name = suite.suite().as_str().unwrap_or("");
    name.eq_ignore_ascii_case(&suite_name(suite)) || name.eq_ignore_ascii_case(rustls_name)
}

fn unknown_suite(name: &str) -> String {
    let known: Vec<String> = policy_cache::crypto::ALL_CIPHER_SUITES
        .iter()
        .map(suite_name)
        .collect();
    format!(
        "unknown cipher suite \"{name}\" (IANA names; available: {})",
        known.join(", ")
    )
}

/// The IANA name of a key-exchange group (`x25519`, `secp256r1`, `X25519MLKEM768`), as logged
/// in `kx=`.
pub fn group_name(group: rustls::NamedGroup) -> String {
    match group {
        rustls::NamedGroup::X25519 => "x25519".into(),
        rustls::NamedGroup::X448 => "x448".into(),
        rustls::NamedGroup::secp256r1MLKEM768 => "SecP256r1MLKEM768".into(),
        other => format!("{other:?}"),
    }
}

/// OpenSSL's names for the classic curves, as in Postfix's `tls_eecdh_auto_curves`.
const GROUP_ALIASES: [(&str, &str); 3] = [
    ("prime256v1", "secp256r1"),
    ("P-256", "secp256r1"),
    ("P-384", "secp384r1"),
];

fn group_matches(group: &dyn SupportedKxGroup, name: &str) -> bool {
    let iana = group_name(group.name());
    let name = GROUP_ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
        .map_or(name, |(_, real)| real);
    name.eq_ignore_ascii_case(&iana)
}

fn unknown_group(name: &str) -> String {
    let known: Vec<String> = policy_cache::crypto::ALL_KX_GROUPS
        .iter()
        .map(|g| group_name(g.name()))
        .collect();
    format!(
        "unknown key-exchange group \"{name}\" (IANA names; available: {})",
        known.join(", ")
    )
}

/// One side's TLS choices, checked against each other, ready for a rustls builder.
#[derive(Debug, Clone)]
pub struct TlsProfile {
    pub provider: Arc<CryptoProvider>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
}

impl TlsProfile {
    /// The provider narrowed to the chosen suites and groups, for the chosen versions. Every
    /// version allowed must be usable: at least one suite and one group for it.
    pub fn new(
        protocols: Protocols,
        suites: &CipherSuites,
        groups: &KxGroups,
    ) -> Result<TlsProfile, (&'static str, String)> {
        let mut provider = policy_cache::crypto::provider();
        if let Some(s) = &suites.0 {
            provider.cipher_suites = s.clone();
        }
        if let Some(g) = &groups.0 {
            provider.kx_groups = g.clone();
        }
        let versions = protocols.versions();
        for v in &versions {
            let wire = v.version;
            let name = crate::tls::version_name(wire);
            if !provider.cipher_suites.iter().any(|s| s.version() == *v) {
                return Err((
                    "tls_cipher_suites",
                    format!("{name} is allowed but tls_cipher_suites names no {name} suite"),
                ));
            }
            if !provider
                .kx_groups
                .iter()
                .any(|g| g.usable_for_version(wire))
            {
                return Err((
                    "tls_groups",
                    format!(
                        "{name} is allowed but tls_groups names no group usable with {name} \
                         (the ML-KEM groups are TLSv1.3 only)"
                    ),
                ));
            }
        }
        // Suites of versions not allowed would only be dead weight in the ClientHello.
        provider
            .cipher_suites
            .retain(|s| versions.contains(&s.version()));
        Ok(TlsProfile {
            provider: Arc::new(provider),
            versions,
        })
    }

    /// The defaults: rustls's versions, suites and groups.
    pub fn default_profile() -> TlsProfile {
        TlsProfile {
            provider: Arc::new(policy_cache::crypto::provider()),
            versions: Protocols::default().versions(),
        }
    }

    /// `TLSv1.2 TLSv1.3; suites …; groups …`, for start-up logs.
    pub fn describe(&self) -> String {
        let versions: Vec<&str> = self
            .versions
            .iter()
            .map(|v| crate::tls::version_name(v.version))
            .collect();
        let suites: Vec<String> = self.provider.cipher_suites.iter().map(suite_name).collect();
        let groups: Vec<String> = self
            .provider
            .kx_groups
            .iter()
            .map(|g| group_name(g.name()))
            .collect();
        format!(
            "protocols {}; cipher suites {}; groups {}",
            versions.join(" "),
            suites.join(" "),
            groups.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(expr: &str) -> Result<Protocols, String> {
        Protocols::parse(expr)
    }

    const BOTH: Protocols = Protocols {
        tls12: true,
        tls13: true,
    };
    const ONLY13: Protocols = Protocols {
        tls12: false,
        tls13: true,
    };
    const ONLY12: Protocols = Protocols {
        tls12: true,
        tls13: false,
    };

    #[test]
    fn postfix_protocol_syntax() {
        let table: &[(&str, Protocols)] = &[
            ("", BOTH),
            (">=TLSv1.2", BOTH),
            (">=TLSv1.3", ONLY13),
            ("<=TLSv1.2", ONLY12),
            (">=TLSv1.2, <=TLSv1.2", ONLY12),
            ("!TLSv1.2", ONLY13),
            ("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", BOTH),
            ("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1:!TLSv1.2", ONLY13),
            ("TLSv1.2 TLSv1.3", BOTH),
            ("TLSv1.3", ONLY13),
            ("tlsv1.3", ONLY13),
            ("TLSv1.2 TLSv1.3 !TLSv1.2", ONLY13),
        ];
        for (expr, want) in table {
            assert_eq!(p(expr).as_ref(), Ok(want), "{expr:?}");
        }
    }

    #[test]
    fn anything_below_tls12_is_refused_with_the_reason() {
        for expr in [
            ">=TLSv1",
            "TLSv1 TLSv1.2",
            ">=TLSv1.1",
            "SSLv3",
            ">=sslv2 !TLSv1",
        ] {
            let e = p(expr).unwrap_err();
            assert!(e.contains("rustls does not implement"), "{expr}: {e}");
            assert!(e.contains("RFC 8996"), "{expr}: {e}");
        }
        let e = p("TLSv1, TLSv1.1, TLSv1.2").unwrap_err();
        assert!(e.contains("asks for TLSv1, TLSv1.1,"), "{e}");
        // Excluding what rustls never had is fine: the classic hardening line.
        assert_eq!(p("!SSLv2, !SSLv3"), Ok(BOTH));
    }

    #[test]
    fn empty_sets_and_unknown_names_are_refused() {
        assert!(p("!TLSv1.2 !TLSv1.3")
            .unwrap_err()
            .contains("allows no protocol"));
        assert!(p("<=TLSv1.1").unwrap_err().contains("allows no protocol"));
        assert!(p(">=TLSv1.3 <=TLSv1.2")
            .unwrap_err()
            .contains("allows no protocol"));
        assert!(p("TLSv1.4")
            .unwrap_err()
            .contains("unknown protocol \"TLSv1.4\""));
        assert!(p(">=SSLv4").unwrap_err().contains("unknown protocol"));
    }

    #[test]
    fn protocols_as_a_string_or_an_array() {
        #[derive(Deserialize)]
        struct K {
            #[serde(deserialize_with = "protocols")]
            p: Protocols,
        }
        let k: K = toml::from_str("p = [\"TLSv1.3\"]").unwrap();
        assert_eq!(k.p, ONLY13);
        let k: K = toml::from_str("p = \"!SSLv2, !SSLv3, !TLSv1.3\"").unwrap();
        assert_eq!(k.p, ONLY12);
        let e = toml::from_str::<K>("p = \">=TLSv1\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("RFC 8996"), "{e}");
    }

    #[derive(Deserialize)]
    struct Keys {
        #[serde(default, deserialize_with = "cipher_suites")]
        suites: CipherSuites,
        #[serde(default, deserialize_with = "kx_groups")]
        groups: KxGroups,
    }

    fn keys(toml_text: &str) -> Result<Keys, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn suites_and_groups_by_iana_name_in_the_order_given() {
        let k = keys(
            "suites = [\"TLS_CHACHA20_POLY1305_SHA256\", \"TLS13_AES_256_GCM_SHA384\", \
             \"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\"]\ngroups = \"secp384r1:X25519MLKEM768 x25519\"",
        )
        .unwrap();
        let names: Vec<String> = k.suites.0.unwrap().iter().map(suite_name).collect();
        assert_eq!(
            names,
            [
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
            ]
        );
        let groups: Vec<String> = k
            .groups
            .0
            .unwrap()
            .iter()
            .map(|g| group_name(g.name()))
            .collect();
        assert_eq!(groups, ["secp384r1", "X25519MLKEM768", "x25519"]);
        let k = keys("groups = [\"prime256v1\"]").unwrap();
        assert_eq!(group_name(k.groups.0.unwrap()[0].name()), "secp256r1");
    }

    #[test]
    fn unknown_suites_and_groups_are_refused_with_the_list() {
        let e = keys("suites = [\"TLS_RSA_WITH_RC4_128_SHA\"]")
            .err()
            .unwrap();
        assert!(
            e.contains("unknown cipher suite \"TLS_RSA_WITH_RC4_128_SHA\""),
            "{e}"
        );
        assert!(e.contains("TLS_AES_128_GCM_SHA256"), "{e}");
        let e = keys("groups = [\"ffdhe2048\"]").err().unwrap();
        assert!(
            e.contains("unknown key-exchange group \"ffdhe2048\""),
            "{e}"
        );
        assert!(e.contains("X25519MLKEM768"), "{e}");
        assert!(keys("groups = []")
            .err()
            .unwrap()
            .contains("no key-exchange group"));
    }

    #[test]
    fn the_default_offers_post_quantum_key_exchange_first() {
        let profile = TlsProfile::default_profile();
        assert_eq!(
            group_name(profile.provider.kx_groups[0].name()),
            "X25519MLKEM768"
        );
        assert_eq!(profile.versions.len(), 2);
    }

    #[test]
    fn a_profile_must_be_usable_for_every_version_it_allows() {
        let k =
            keys("suites = [\"TLS_AES_128_GCM_SHA256\"]\ngroups = [\"X25519MLKEM768\"]").unwrap();
        let (key, e) = TlsProfile::new(BOTH, &k.suites, &KxGroups::default()).unwrap_err();
        assert_eq!(key, "tls_cipher_suites");
        assert!(e.contains("names no TLSv1.2 suite"), "{e}");
        let (key, e) =
            TlsProfile::new(ONLY13.union12(), &CipherSuites::default(), &k.groups).unwrap_err();
        assert_eq!(key, "tls_groups");
        assert!(e.contains("no group usable with TLSv1.2"), "{e}");
        let ok = TlsProfile::new(ONLY13, &k.suites, &k.groups).unwrap();
        assert_eq!(ok.versions.len(), 1);
        // Suites of a version not allowed are dropped.
        let only12 =
            TlsProfile::new(ONLY12, &CipherSuites::default(), &KxGroups::default()).unwrap();
        assert!(only12
            .provider
            .cipher_suites
            .iter()
            .all(|s| s.version() == &rustls::version::TLS12));
    }

    impl Protocols {
        fn union12(self) -> Protocols {
            Protocols {
                tls12: true,
                ..self
            }
        }
    }
}
