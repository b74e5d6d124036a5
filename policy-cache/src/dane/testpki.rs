//! Test certificates: a private CA → intermediate → leaf for `mx.example.test`, an unrelated
//! CA, self-signed leaves, and dates around a fixed "now" (2030-01-01).

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use std::time::Duration;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::tlsa::Tlsa;

pub const MX: &str = "mx.example.test";

/// 2030-01-01T00:00:00Z.
pub fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(1_893_456_000))
}

#[derive(Debug, Clone, Copy)]
pub enum Dates {
    /// 2020–2040.
    Valid,
    /// 2000–2010.
    Expired,
    /// 2035–2045.
    Future,
}

fn set_dates(params: &mut CertificateParams, dates: Dates) {
    let (from, to) = match dates {
        Dates::Valid => (2020, 2040),
        Dates::Expired => (2000, 2010),
        Dates::Future => (2035, 2045),
    };
    params.not_before = date_time_ymd(from, 1, 1);
    params.not_after = date_time_ymd(to, 1, 1);
}

fn ca_params(cn: &str, dates: Dates) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    set_dates(&mut params, dates);
    params
}

/// How the leaf should look.
#[derive(Debug, Clone)]
struct LeafSpec {
    /// DNS subjectAltNames; empty for a CN-only certificate.
    sans: Vec<String>,
    cn: String,
    dates: Dates,
}

/// A private PKI: root → intermediate → leaf, plus an unrelated CA.
pub struct Pki {
    pub root: CertificateDer<'static>,
    pub intermediate: CertificateDer<'static>,
    pub leaf: CertificateDer<'static>,
    pub unrelated_ca: CertificateDer<'static>,
    leaf_key: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::build(Dates::Valid, Pki::default_leaf())
    }

    pub fn with_leaf_name(name: &str) -> Pki {
        let mut leaf = Pki::default_leaf();
        leaf.sans = vec![name.to_string()];
        Pki::build(Dates::Valid, leaf)
    }

    pub fn with_leaf_cn_only(cn: &str) -> Pki {
        let mut leaf = Pki::default_leaf();
        leaf.sans.clear();
        leaf.cn = cn.to_string();
        Pki::build(Dates::Valid, leaf)
    }

    pub fn with_leaf_dates(dates: Dates) -> Pki {
        let mut leaf = Pki::default_leaf();
        leaf.dates = dates;
        Pki::build(Dates::Valid, leaf)
    }

    pub fn with_intermediate_dates(dates: Dates) -> Pki {
        Pki::build(dates, Pki::default_leaf())
    }

    fn default_leaf() -> LeafSpec {
        LeafSpec {
            sans: vec![MX.to_string()],
            cn: "Test mail server".to_string(),
            dates: Dates::Valid,
        }
    }

    fn build(intermediate_dates: Dates, spec: LeafSpec) -> Pki {
        let root = CertifiedIssuer::self_signed(
            ca_params("Test Root CA", Dates::Valid),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca_params("Test Intermediate CA", intermediate_dates),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let unrelated = CertifiedIssuer::self_signed(
            ca_params("Unrelated CA", Dates::Valid),
            KeyPair::generate().unwrap(),
        )
        .unwrap();

        let mut params = CertificateParams::new(spec.sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, spec.cn);
        set_dates(&mut params, spec.dates);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &intermediate).unwrap();

        Pki {
            root: root.der().clone(),
            intermediate: intermediate.der().clone(),
            leaf: leaf.der().clone(),
            unrelated_ca: unrelated.der().clone(),
            leaf_key,
        }
    }

    /// What a typical server sends: leaf and intermediate.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.intermediate.clone()]
    }

    pub fn leaf_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()))
    }
}

/// A self-signed, non-CA certificate for `name`.
pub fn self_signed(name: &str, dates: Dates) -> CertificateDer<'static> {
    self_signed_with_key(name, dates).0
}

pub fn self_signed_with_key(
    name: &str,
    dates: Dates,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    set_dates(&mut params, dates);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), key)
}

/// The TLSA record a server operator would publish for `cert`.
pub fn record(usage: u8, selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
    let content = match selector {
        0 => cert.to_vec(),
        _ => {
            let (_, parsed) = X509Certificate::from_der(cert).unwrap();
            parsed.tbs_certificate.subject_pki.raw.to_vec()
        }
    };
    Tlsa::for_content(usage, selector, matching, &content)
}
