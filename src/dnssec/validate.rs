//! In-process validation (`[dns] dnssec = "validate"`): hickory's resolver checks every
//! answer from the trust anchors, and each record carries its proof.

use super::anchors::{self, Anchor, TrustAnchor};
use super::{keyset, opt_out};
use super::{DnssecFailure, DnssecSetupError, Secured, Security};
use crate::config::DnsConfig;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OnceCell};

/// A resolver that validates every answer (RFC 4035 §5) from configured trust anchors.
#[derive(Clone)]
pub struct DnssecResolver {
    inner: Arc<Inner>,
}

struct Inner {
    config: DnsConfig,
    /// The anchors of `trust_anchor_file`; `None`: hickory's built-in IANA root keys.
    anchors: Option<Vec<Anchor>>,
    /// The validating resolver, with the key sets its anchors vouch for, once built.
    current: RwLock<Option<Current>>,
    /// One rebuild at a time.
    rebuilding: Mutex<()>,
    /// For names outside every anchored zone (see [`DnssecResolver::lookup`]).
    plain: OnceCell<TokioResolver>,
}

#[derive(Clone)]
struct Current {
    resolver: TokioResolver,
    /// When the anchored zones' key sets are to be fetched again (their TTL, their
    /// signatures' expiry; sooner after a failed fetch).
    refresh_at: Instant,
}

/// After a failed fetch of an anchored zone's keys, try again this soon.
const RETRY: Duration = Duration::from_secs(60);

impl DnssecResolver {
    /// The validating resolver of `[dns]`: its `nameservers` (or `/etc/resolv.conf`),
    /// `timeout` and `cache_size`, and the anchors of `trust_anchor_file` (or hickory's built-in
    /// IANA root keys when no file is configured). The anchored zones' key sets are fetched
    /// at the first look-up.
    pub fn from_config(config: &DnsConfig) -> Result<DnssecResolver, DnssecSetupError> {
        let anchors = match &config.trust_anchor_file {
            Some(path) => Some(anchors::load_trust_anchors(path)?),
            None => None,
        };
        Ok(DnssecResolver {
            inner: Arc::new(Inner {
                config: config.clone(),
                anchors,
                current: RwLock::new(None),
                rebuilding: Mutex::new(()),
                plain: OnceCell::new(),
            }),
        })
    }

    /// The validated records of type `rtype` at `name` (absolute: no search domains).
    /// CNAMEs are followed by the resolver; the answer is only as secure as its whole chain.
    ///
    /// A name outside every zone of `trust_anchor_file` is insecure (RFC 4035 §4.3: no trust
    /// anchor says that part of the tree is signed), as unbound and BIND have it, not bogus:
    /// an operator who anchors a private zone still reaches the rest of the world.
    pub async fn lookup(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Secured<Vec<RData>>, DnssecFailure> {
        if let Some(anchors) = &self.inner.anchors {
            // A DS RRset belongs to the parent's side of the zone cut (RFC 4035 §2.4).
            let zone_name = match rtype {
                RecordType::DS if !name.is_root() => name.base_name(),
                _ => name.clone(),
            };
            if !anchors.iter().any(|a| a.zone().zone_of(&zone_name)) {
                return self.inner.unanchored(name, rtype).await;
            }
        }
        let resolver = self.inner.resolver().await?;
        // An absolute name: no search domains (SecureResolver::lookup makes sure).
        match resolver.lookup(name.clone(), rtype).await {
            Ok(answer) => classify_answer(rtype, answer.answers()),
            Err(e) => Err(classify_error(&e)),
        }
    }
}

impl Inner {
    /// A look-up without validation, every answer insecure.
    async fn unanchored(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Secured<Vec<RData>>, DnssecFailure> {
        let resolver = self
            .plain
            .get_or_try_init(|| async {
                crate::delivery::dns::build_resolver(&self.config)
                    .map_err(|e| DnssecFailure::TempFail(e.to_string()))
            })
            .await?;
        match resolver.lookup(name.clone(), rtype).await {
            Ok(answer) => {
                let records: Vec<&Record> = answer
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect();
                let Some(owner) = records.first().map(|r| r.name.clone()) else {
                    return Err(DnssecFailure::NoData { secure: false });
                };
                Ok(Secured {
                    status: Security::Insecure,
                    records: records.iter().map(|r| r.data.clone()).collect(),
                    owner,
                })
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
                Err(negative(nr.response_code, false))
            }
            Err(e) => Err(DnssecFailure::TempFail(e.to_string())),
        }
    }

    /// The resolver in force, rebuilt first when its key sets are due for a refresh. A failed
    /// refresh keeps the old resolver (its keys were good a TTL ago) and tries again later.
    async fn resolver(&self) -> Result<TokioResolver, DnssecFailure> {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let _one = self.rebuilding.lock().await;
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let built = self.build().await;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        match (built, current.as_mut()) {
            (Ok(c), _) => {
                *current = Some(c.clone());
                Ok(c.resolver)
            }
            (Err(e), Some(old)) => {
                tracing::warn!("DNSSEC: keeping the previous trust anchor keys: {e}");
                old.refresh_at = Instant::now() + RETRY;
                Ok(old.resolver.clone())
            }
            (Err(e), None) => Err(e),
        }
    }

    fn fresh(&self) -> Option<TokioResolver> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.resolver.clone())
    }

    /// A resolver trusting, for each anchored zone, every key of its verified DNSKEY RRset
    /// (see [`keyset`]). A zone whose keys cannot be fetched or verified now keeps only its
    /// configured DNSKEY anchors, and the whole set is tried again soon.
    async fn build(&self) -> Result<Current, DnssecFailure> {
        let fail = |why: String| DnssecFailure::TempFail(format!("trust anchor: {why}"));
        let Some(anchors) = &self.anchors else {
            let resolver =
                build(&self.config, TrustAnchors::default()).map_err(|e| fail(e.to_string()))?;
            return Ok(Current {
                resolver,
                refresh_at: Instant::now() + Duration::from_secs(86_400 * 365),
            });
        };
        let servers =
            super::trust_ad::name_servers(&self.config).map_err(|e| fail(e.to_string()))?;
        let mut keys: Vec<TrustAnchor> = Vec::new();
        let mut valid_for = Duration::MAX;
        let mut failures = Vec::new();
        for (zone, zone_anchors) in keyset::by_zone(anchors) {
            match keyset::fetch(&servers, self.config.timeout, &zone, &zone_anchors).await {
                Ok(verified) => {
                    tracing::info!(
                        "DNSSEC: trust anchor for {zone}: {} key(s) of its verified DNSKEY RRset, \
                         for {}s",
                        verified.keys.len(),
                        verified.valid_for.as_secs()
                    );
                    valid_for = valid_for.min(verified.valid_for);
                    keys.extend(verified.keys);
                }
                Err(why) => {
                    tracing::warn!("DNSSEC: trust anchor for {zone}: {why}");
                    valid_for = valid_for.min(RETRY);
                    keys.extend(anchors::keys(&zone_anchors));
                    failures.push(why);
                }
            }
        }
        if keys.is_empty() {
            return Err(fail(failures.join("; ")));
        }
        let resolver =
            build(&self.config, anchors::trust_anchors(&keys)).map_err(|e| fail(e.to_string()))?;
        Ok(Current {
            resolver,
            refresh_at: Instant::now() + valid_for,
        })
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
                Ok(status) => {
                    let proven = !authorities.is_empty() && status == Security::Secure;
                    let opt_out = nr.response_code == ResponseCode::NXDomain
                        && opt_out::rests_on_opt_out(nr.query.name(), authorities);
                    negative(nr.response_code, proven && !opt_out)
                }
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
