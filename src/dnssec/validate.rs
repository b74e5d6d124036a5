//! In-process validation (`[dns] dnssec = "validate"`): hickory's resolver checks every
//! answer from the trust anchors, and each record carries its proof.

use super::anchors::{self, DsAnchor, TrustAnchor};
use super::{DnssecFailure, DnssecSetupError, Secured, Security};
use crate::config::DnsConfig;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::rdata::DNSSECRData;
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A resolver that validates every answer (RFC 4035 §5) from configured trust anchors.
#[derive(Clone)]
pub struct DnssecResolver {
    /// The validating resolver, once its anchors are known: at once for DNSKEY anchors (or
    /// hickory's built-in root keys); after the first look-up of the anchored zones' DNSKEY
    /// RRsets for DS anchors.
    resolver: Arc<OnceCell<TokioResolver>>,
    /// What a DS anchor needs to become a key; `None` once built.
    pending: Option<Arc<PendingAnchors>>,
}

/// DS anchors waiting for their zones' keys.
struct PendingAnchors {
    config: DnsConfig,
    keys: Vec<TrustAnchor>,
    ds: Vec<DsAnchor>,
}

impl DnssecResolver {
    /// The validating resolver of `[dns]`: its `nameservers` (or `/etc/resolv.conf`),
    /// `timeout` and `cache_size`, and the anchors of `trust_anchor_file` (or hickory's built-in
    /// IANA root keys when no file is configured).
    pub fn from_config(config: &DnsConfig) -> Result<DnssecResolver, DnssecSetupError> {
        let Some(path) = &config.trust_anchor_file else {
            return DnssecResolver::with_anchors(config, TrustAnchors::default());
        };
        let anchors = anchors::load_trust_anchors(path)?;
        let ds = anchors::ds_anchors(&anchors);
        let keys = anchors::keys(&anchors);
        if ds.is_empty() {
            return DnssecResolver::with_anchors(config, anchors::trust_anchors(&keys));
        }
        Ok(DnssecResolver {
            resolver: Arc::new(OnceCell::new()),
            pending: Some(Arc::new(PendingAnchors {
                config: config.clone(),
                keys,
                ds,
            })),
        })
    }

    /// The same, with the trust anchors given.
    pub fn with_anchors(
        config: &DnsConfig,
        anchors: TrustAnchors,
    ) -> Result<DnssecResolver, DnssecSetupError> {
        let resolver = build(config, anchors)?;
        Ok(DnssecResolver {
            resolver: Arc::new(OnceCell::new_with(Some(resolver))),
            pending: None,
        })
    }

    /// The validated records of type `rtype` at `name` (absolute: no search domains).
    /// CNAMEs are followed by the resolver; the answer is only as secure as its whole chain.
    pub async fn lookup(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Secured<Vec<RData>>, DnssecFailure> {
        let resolver = self
            .resolver
            .get_or_try_init(|| async {
                match &self.pending {
                    Some(pending) => pending.resolve().await,
                    None => Err(DnssecFailure::TempFail("no trust anchors".into())),
                }
            })
            .await?;
        // An absolute name: no search domains (SecureResolver::lookup makes sure).
        match resolver.lookup(name.clone(), rtype).await {
            Ok(answer) => classify_answer(rtype, answer.answers()),
            Err(e) => Err(classify_error(&e)),
        }
    }
}

impl PendingAnchors {
    /// RFC 4034 §5: the keys of each DS-anchored zone are those of its DNSKEY RRset whose
    /// digest the DS gives. The RRset is fetched without validation (it is what the anchor
    /// vouches for); the validator then checks its self-signature like any other. A failed
    /// fetch is temporary: the next look-up tries again.
    async fn resolve(&self) -> Result<TokioResolver, DnssecFailure> {
        let fail = |why: String| DnssecFailure::TempFail(format!("trust anchor: {why}"));
        let plain =
            crate::delivery::dns::build_resolver(&self.config).map_err(|e| fail(e.to_string()))?;
        let mut keys = self.keys.clone();
        for anchor in &self.ds {
            let answer = plain
                .lookup(anchor.zone.clone(), RecordType::DNSKEY)
                .await
                .map_err(|e| fail(format!("DNSKEY of {}: {e}", anchor.zone)))?;
            let matching: Vec<TrustAnchor> = answer
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::DNSSEC(DNSSECRData::DNSKEY(key)) => Some(key),
                    _ => None,
                })
                .filter(|key| anchor.ds.covers(&anchor.zone, key).unwrap_or(false))
                .map(|key| TrustAnchor {
                    zone: anchor.zone.clone(),
                    flags: key.flags(),
                    key: key.public_key().clone(),
                })
                .collect();
            if matching.is_empty() {
                return Err(fail(format!(
                    "no DNSKEY of {} matches its DS (key tag {})",
                    anchor.zone,
                    anchor.ds.key_tag()
                )));
            }
            keys.extend(matching);
        }
        tracing::info!(
            "DNSSEC trust anchors: {} key(s), from the DS records of {}",
            keys.len(),
            self.ds
                .iter()
                .map(|d| d.zone.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        build(&self.config, anchors::trust_anchors(&keys)).map_err(|e| fail(e.to_string()))
    }
}

/// hickory's validating resolver for `config`, trusting `anchors`.
fn build(config: &DnsConfig, anchors: TrustAnchors) -> Result<TokioResolver, DnssecSetupError> {
    let setup = |e: NetError| DnssecSetupError::Resolver(e.to_string());
    let builder = crate::delivery::dns::resolver_builder(config).map_err(setup)?;
    builder
        .with_trust_anchor(Arc::new(anchors))
        .build()
        .map_err(setup)
}

/// Sorts a validated positive answer: every record but the RRSIGs carries hickory's proof.
/// Any bogus or indeterminate record spoils the answer (RFC 4035 §5.5, RFC 7672 §2.1.1);
/// otherwise it is secure only if every record is (RFC 4035 §4.3).
pub(crate) fn classify_answer(
    rtype: RecordType,
    answers: &[Record],
) -> Result<Secured<Vec<RData>>, DnssecFailure> {
    let status = chain_status(answers)?;
    let records: Vec<RData> = answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.clone())
        .collect();
    let Some(owner) = answers
        .iter()
        .find(|r| r.record_type() == rtype)
        .map(|r| r.name.clone())
    else {
        return Err(DnssecFailure::NoData {
            secure: status == Security::Secure,
        });
    };
    Ok(Secured {
        status,
        records,
        owner,
    })
}

/// The security of a set of records: the weakest proof among them, RRSIGs aside (only the RRSIG
/// that validated an RRset carries its proof).
fn chain_status(records: &[Record]) -> Result<Security, DnssecFailure> {
    let mut status = None;
    for record in records
        .iter()
        .filter(|r| r.record_type() != RecordType::RRSIG)
    {
        match record.proof {
            Proof::Secure => {
                status.get_or_insert(Security::Secure);
            }
            Proof::Insecure => status = Some(Security::Insecure),
            Proof::Bogus => {
                return Err(DnssecFailure::Bogus(format!(
                    "{} {} is bogus",
                    record.name,
                    record.record_type()
                )))
            }
            Proof::Indeterminate => {
                return Err(DnssecFailure::Bogus(format!(
                    "{} {} is indeterminate",
                    record.name,
                    record.record_type()
                )))
            }
        }
    }
    // An empty set proves nothing.
    Ok(status.unwrap_or(Security::Insecure))
}

/// Sorts a failed look-up. hickory reports bogus data as `DnssecBogus` (or an NSEC error with a
/// bogus proof), a validated negative answer as `NoRecordsFound` with its denial records (and
/// their proofs) among the authorities, and an unprovable denial as an NSEC error.
pub(crate) fn classify_error(err: &NetError) -> DnssecFailure {
    match err {
        NetError::Dns(DnsError::DnssecBogus) => {
            DnssecFailure::Bogus("DNSSEC validation failed".into())
        }
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            // The denial (SOA, NSEC3 and their signatures) is as good as its weakest record; a
            // bogus one must not pass for an insecure denial.
            let authorities = nr.authorities.as_deref().unwrap_or_default();
            match chain_status(authorities) {
                Err(bogus) => bogus,
                Ok(status) => negative(
                    nr.response_code,
                    !authorities.is_empty() && status == Security::Secure,
                ),
            }
        }
        NetError::Dns(DnsError::Nsec {
            response, proof, ..
        }) => match proof {
            Proof::Secure | Proof::Insecure => negative(response.response_code, false),
            Proof::Bogus | Proof::Indeterminate => {
                DnssecFailure::Bogus(format!("denial of existence is {proof}"))
            }
        },
        NetError::Dns(DnsError::ResponseCode(code)) => DnssecFailure::TempFail(code.to_string()),
        other => DnssecFailure::TempFail(other.to_string()),
    }
}

/// A negative answer by its response code (RFC 2308 §2): NXDOMAIN, NODATA, or anything else
/// (which is no answer at all).
fn negative(code: ResponseCode, secure: bool) -> DnssecFailure {
    match code {
        ResponseCode::NXDomain => DnssecFailure::NxDomain { secure },
        ResponseCode::NoError => DnssecFailure::NoData { secure },
        other => DnssecFailure::TempFail(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::{A, CNAME, SOA};

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn record(owner: &str, rdata: RData, proof: Proof) -> Record {
        let mut r = Record::from_rdata(name(owner), 60, rdata);
        r.proof = proof;
        r
    }

    fn a(owner: &str, proof: Proof) -> Record {
        record(owner, RData::A(A::new(192, 0, 2, 1)), proof)
    }

    #[test]
    fn positive_answers_take_the_weakest_proof() {
        let rrsig_free = |proof| vec![a("mx.example.test.", proof)];
        let secure = classify_answer(RecordType::A, &rrsig_free(Proof::Secure)).unwrap();
        assert_eq!(secure.status, Security::Secure);
        assert_eq!(secure.records, vec![RData::A(A::new(192, 0, 2, 1))]);
        let insecure = classify_answer(RecordType::A, &rrsig_free(Proof::Insecure)).unwrap();
        assert_eq!(insecure.status, Security::Insecure);
        assert!(matches!(
            classify_answer(RecordType::A, &rrsig_free(Proof::Bogus)),
            Err(DnssecFailure::Bogus(_))
        ));
        assert!(matches!(
            classify_answer(RecordType::A, &rrsig_free(Proof::Indeterminate)),
            Err(DnssecFailure::Bogus(_))
        ));
        // A secure CNAME into an insecure zone: insecure; the CNAME itself is not returned.
        let cname = record(
            "alias.example.test.",
            RData::CNAME(CNAME(name("mx.other.test."))),
            Proof::Secure,
        );
        let chain = vec![cname.clone(), a("mx.other.test.", Proof::Insecure)];
        let answer = classify_answer(RecordType::A, &chain).unwrap();
        assert_eq!(answer.status, Security::Insecure);
        assert_eq!(answer.records.len(), 1);
        // Only a CNAME and no record of the type: NODATA.
        assert_eq!(
            classify_answer(RecordType::A, &[cname]),
            Err(DnssecFailure::NoData { secure: true })
        );
    }

    fn no_records(code: ResponseCode, authorities: Vec<Record>) -> NetError {
        let mut nr = NoRecords::new(Query::query(name("x.example.test."), RecordType::A), code);
        nr.authorities = Some(authorities.into());
        NetError::Dns(DnsError::NoRecordsFound(nr))
    }

    fn soa(proof: Proof) -> Record {
        let soa = SOA::new(
            name("ns.example.test."),
            name("h.example.test."),
            1,
            1,
            1,
            1,
            1,
        );
        record("example.test.", RData::SOA(soa), proof)
    }

    #[test]
    fn negative_answers_are_secure_only_when_proven() {
        assert_eq!(
            classify_error(&no_records(
                ResponseCode::NXDomain,
                vec![soa(Proof::Secure)]
            )),
            DnssecFailure::NxDomain { secure: true }
        );
        assert_eq!(
            classify_error(&no_records(ResponseCode::NoError, vec![soa(Proof::Secure)])),
            DnssecFailure::NoData { secure: true }
        );
        assert_eq!(
            classify_error(&no_records(
                ResponseCode::NoError,
                vec![soa(Proof::Secure), a("x.example.test.", Proof::Insecure)]
            )),
            DnssecFailure::NoData { secure: false }
        );
        assert_eq!(
            classify_error(&no_records(ResponseCode::NXDomain, vec![])),
            DnssecFailure::NxDomain { secure: false }
        );
        assert!(matches!(
            classify_error(&no_records(
                ResponseCode::NXDomain,
                vec![soa(Proof::Secure), a("x.example.test.", Proof::Bogus)]
            )),
            DnssecFailure::Bogus(_)
        ));
    }

    #[test]
    fn failures_to_answer_are_temporary_and_bogus_is_bogus() {
        assert!(matches!(
            classify_error(&NetError::Dns(DnsError::DnssecBogus)),
            DnssecFailure::Bogus(_)
        ));
        assert_eq!(
            classify_error(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            DnssecFailure::TempFail(ResponseCode::ServFail.to_string())
        );
        assert!(matches!(
            classify_error(&NetError::Timeout),
            DnssecFailure::TempFail(_)
        ));
        assert!(matches!(
            classify_error(&no_records(ResponseCode::Refused, vec![])),
            DnssecFailure::TempFail(_)
        ));
    }
}
