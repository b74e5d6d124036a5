//! The lab's certificate authority: a throwaway CA made fresh for each test, and the server
//! certificates it issues — valid ones, and the broken kinds a relay must refuse (expired, not
//! yet valid, self-signed, issued for another name).
//!
//! ```ignore
//! let ca = LabCa::new();
//! let (cert_pem, key_pem) = ca.issue(&["mx1.example.test"]);
//! let expired = ca.issue_with(&["mx1.example.test"], CertOptions::expired());
//! let (cert_file, key_file) = expired.write_pem(dir, "mx1");
//! let ca_file = ca.write_pem(dir); // for `delivery.extra_ca_files`
//! // A sub-CA (for DANE-TA tests): its leaves' chains are leaf + intermediate, no root.
//! let sub = ca.intermediate(CertOptions::default());
//! let leaf = sub.issue_with(&["mx1.example.test"], CertOptions::default());
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// When a certificate is valid, relative to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validity {
    /// From yesterday to a year from now.
    #[default]
    Current,
    /// Ended yesterday.
    Expired,
    /// Begins tomorrow.
    NotYetValid,
}

/// How to issue a certificate; the default is a good one.
#[derive(Debug, Clone, Default)]
pub struct CertOptions {
    pub validity: Validity,
    /// Sign with the certificate's own key instead of the CA's.
    pub self_signed: bool,
    /// Put `wrong-name.invalid` in the certificate instead of the names asked for.
    pub wrong_name: bool,
    /// No subjectAltName: the first name only as the subject's common name (as old
    /// certificates have it; RFC 6125 §6.4.4).
    pub common_name_only: bool,
}

impl CertOptions {
    pub fn expired() -> Self {
        CertOptions {
            validity: Validity::Expired,
            ..Default::default()
        }
    }

    pub fn not_yet_valid() -> Self {
        CertOptions {
            validity: Validity::NotYetValid,
            ..Default::default()
        }
    }

    pub fn self_signed() -> Self {
        CertOptions {
            self_signed: true,
            ..Default::default()
        }
    }

    pub fn wrong_name() -> Self {
        CertOptions {
            wrong_name: true,
            ..Default::default()
        }
    }
}

/// A certificate and its key, as a server would be configured with them.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf certificate alone.
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// SubjectPublicKeyInfo of the leaf's key (what a TLSA record with selector 1 hashes).
    pub spki_der: Vec<u8>,
    /// The leaf followed by the issuing CA's certificate (the leaf alone when self-signed;
    /// leaf + intermediate from an [`LabCa::intermediate`]).
    pub chain_pem: String,
}

impl Issued {
    /// Writes `<stem>.crt` (the chain) and `<stem>.key` into `dir`; returns their paths.
    pub fn write_pem(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.chain_pem).expect("write lab certificate");
        std::fs::write(&key, &self.key_pem).expect("write lab key");
        (cert, key)
    }
}

pub struct LabCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// What a server sends after its leaf: this CA's certificate (a root sends itself, an
    /// intermediate itself without its root, as real servers do).
    chain_tail: String,
}

impl Default for LabCa {
    fn default() -> Self {
        LabCa::new()
    }
}

impl LabCa {
    /// A new CA, valid from yesterday for ten years, with its own fresh key.
    pub fn new() -> LabCa {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mxguard lab CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate().expect("generate lab CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign lab CA");
        let chain_tail = issuer.pem();
        LabCa { issuer, chain_tail }
    }

    /// An intermediate CA signed by this one, with its own fresh key, valid as
    /// `options.validity` says (`Expired`: it ended yesterday); the other options are ignored.
    /// The leaves it issues come with the chain leaf + intermediate (the root left out).
    pub fn intermediate(&self, options: CertOptions) -> LabCa {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mxguard lab intermediate CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = dates(options.validity);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().expect("generate lab intermediate CA key");
        let issuer = CertifiedIssuer::signed_by(params, key, &self.issuer)
            .expect("sign lab intermediate CA");
        let chain_tail = issuer.pem();
        LabCa { issuer, chain_tail }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// The DER SubjectPublicKeyInfo of this CA's key (what a TLSA record with selector 1
    /// designates).
    pub fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(self.issuer.key())
    }

    /// Writes the CA certificate to `dir/lab-ca.crt` (for `delivery.extra_ca_files` or a
    /// client's trust store); returns the path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("lab-ca.crt");
        std::fs::write(&path, self.cert_pem()).expect("write lab CA certificate");
        path
    }

    /// A valid server certificate for `names`: `(cert_pem, key_pem)`.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let issued = self.issue_with(names, CertOptions::default());
        (issued.cert_pem, issued.key_pem)
    }

    /// A server certificate for `names`, broken as `options` say.
    pub fn issue_with(&self, names: &[&str], options: CertOptions) -> Issued {
        let names: Vec<String> = if options.wrong_name {
            vec!["wrong-name.invalid".to_string()]
        } else {
            names.iter().map(|n| n.to_string()).collect()
        };
        let mut params = CertificateParams::new(names.clone()).expect("valid lab names");
        if options.common_name_only {
            params.subject_alt_names.clear();
        }
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = !options.self_signed;
        let (not_before, not_after) = dates(options.validity);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().expect("generate lab key");
        let cert = if options.self_signed {
            params.self_signed(&key)
        } else {
            params.signed_by(&key, &self.issuer)
        }
        .expect("sign lab certificate");
        let cert_pem = cert.pem();
        let chain_pem = if options.self_signed {
            cert_pem.clone()
        } else {
            format!("{cert_pem}{}", self.chain_tail)
        };
        Issued {
            cert_pem,
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            chain_pem,
        }
    }
}

/// `(not_before, not_after)` for `validity`, relative to now.
fn dates(validity: Validity) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    match validity {
        Validity::Current => (now - Duration::days(1), now + Duration::days(365)),
        Validity::Expired => (now - Duration::days(30), now - Duration::days(1)),
        Validity::NotYetValid => (now + Duration::days(1), now + Duration::days(30)),
    }
}
