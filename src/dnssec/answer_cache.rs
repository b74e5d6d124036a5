//! The `trust-ad` resolver's answers, kept for a short time: for the socketmap policy service.
//!
//! hickory's resolver caches what the plain look-ups get, but the AD-bit path asks the local
//! validating resolver for every name, every time: a new UDP socket and a round trip per MX,
//! address and TLSA look-up. Delivery keeps it that way (Postfix's model: the local
//! validating resolver is the cache, and `unbound-control flush` takes effect at once for the
//! next message). The policy service answers Postfix many times a second for the same
//! domains, so it keeps each verdict for at most a few seconds ([`AnswerCache::new`]'s
//! `max_ttl`), and never longer than DNS allows (RFC 1035 §3.2.1; RFC 4035 §4.5):
//! - records (secure or insecure): the smallest TTL of the answer section (the records of the
//!   type asked, the CNAMEs of a chain, their RRSIGs);
//! - NXDOMAIN and NODATA: RFC 2308 §5, the smaller of the SOA record's TTL and its MINIMUM
//!   field, from the authority section; a denial without a SOA record is not kept;
//! - failures (SERVFAIL, timeouts) are never kept: the next look-up asks again.
//!
//! TTLs are capped as unbound caps them by default (`cache-max-ttl` one day,
//! `cache-max-negative-ttl` one hour) and by `max_ttl`. The cache holds at most `capacity`
//! answers; when full, expired ones go first, then those closest to expiry.

use super::{DnssecFailure, Secured};
use hickory_proto::op::Message;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a positive answer is kept (unbound's `cache-max-ttl`).
pub const MAX_POSITIVE_TTL: Duration = Duration::from_secs(86_400);
/// The longest a denial is kept (unbound's `cache-max-negative-ttl`).
pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(3_600);

/// One look-up's outcome, as [`super::trust_ad::classify`] sorts it.
pub type Answer = Result<Secured<Vec<RData>>, DnssecFailure>;

/// Answers by name (case-insensitive, as `Name` compares) and type, until they expire.
pub struct AnswerCache {
    entries: Mutex<HashMap<(Name, RecordType), Kept>>,
    capacity: usize,
    max_ttl: Duration,
}

struct Kept {
    answer: Answer,
    expires: Instant,
}

impl AnswerCache {
    /// A cache of at most `capacity` answers, each kept at most `max_ttl`; 0 keeps nothing.
    pub fn new(capacity: usize, max_ttl: Duration) -> AnswerCache {
        AnswerCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
            max_ttl,
        }
    }

    /// The unexpired answer for `name` and `rtype`, if one is kept.
    pub fn get(&self, name: &Name, rtype: RecordType, now: Instant) -> Option<Answer> {
        let mut entries = self.lock();
        let key = (name.clone(), rtype);
        match entries.get(&key) {
            Some(kept) if kept.expires > now => Some(kept.answer.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer`, which `response` brought, for as long as [`lifetime`] allows.
    pub fn put(
        &self,
        name: &Name,
        rtype: RecordType,
        response: &Message,
        answer: &Answer,
        now: Instant,
    ) {
        let Some(ttl) = lifetime(response, answer).map(|t| t.min(self.max_ttl)) else {
            return;
        };
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            make_room(&mut entries, self.capacity, now);
        }
        entries.insert(
            (name.clone(), rtype),
            Kept {
                answer: answer.clone(),
                expires: now + ttl,
            },
        );
    }

    /// Answers kept now (expired ones included until they are looked at or pushed out).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Name, RecordType), Kept>> {
        // A panic while holding the lock cannot leave a half-made entry: use what is there.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long `answer` (from `response`) may be kept; `None` for what must not be kept.
pub fn lifetime(response: &Message, answer: &Answer) -> Option<Duration> {
    match answer {
        Ok(_) => {
            let ttl = response.answers.iter().map(|r| r.ttl).min()?;
            Some(Duration::from_secs(ttl.into()).min(MAX_POSITIVE_TTL))
        }
        // Denials (`classify` makes them from NOERROR and NXDOMAIN replies only).
        Err(DnssecFailure::NxDomain { .. } | DnssecFailure::NoData { .. }) => {
            let ttl = response.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?;
            Some(Duration::from_secs(ttl.into()).min(MAX_NEGATIVE_TTL))
        }
        Err(DnssecFailure::TempFail(_) | DnssecFailure::Bogus(_)) => None,
    }
}

/// Drops the expired answers and, if that is not enough, the tenth closest to expiry, so that
/// a full cache is not swept again at the next insert.
fn make_room(entries: &mut HashMap<(Name, RecordType), Kept>, capacity: usize, now: Instant) {
    entries.retain(|_, kept| kept.expires > now);
    if entries.len() < capacity {
        return;
    }
    let keep = capacity - capacity.div_ceil(10);
    let mut expiries: Vec<Instant> = entries.values().map(|k| k.expires).collect();
    let cut = expiries.len() - keep;
    let (_, &mut threshold, _) = expiries.select_nth_unstable(cut.saturating_sub(1));
    entries.retain(|_, kept| kept.expires > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnssec::Security;
    use hickory_proto::op::{OpCode, ResponseCode};
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use hickory_proto::rr::Record;
    use std::net::Ipv4Addr;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn a(owner: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::new(127, 0, 0, 2))))
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let data = SOA::new(
            name("ns.example.test."),
            name("hostmaster.example.test."),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        Record::from_rdata(name("example.test."), ttl, RData::SOA(data))
    }

    fn response(code: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = code;
        m.answers = answers;
        m.authorities = authorities;
        m
    }

    fn found() -> Answer {
        Ok(Secured {
            status: Security::Secure,
            records: vec![RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))],
            owner: name("mx.example.test."),
        })
    }

    #[test]
    fn records_live_for_their_smallest_ttl_capped_at_a_day() {
        let cname = Record::from_rdata(
            name("mx.example.test."),
            40,
            RData::CNAME(CNAME(name("host.example.net."))),
        );
        let r = response(
            ResponseCode::NoError,
            vec![cname, a("host.example.net.", 300)],
            vec![],
        );
        assert_eq!(lifetime(&r, &found()), Some(Duration::from_secs(40)));
        let long = response(
            ResponseCode::NoError,
            vec![a("mx.example.test.", 604_800)],
            vec![],
        );
        assert_eq!(lifetime(&long, &found()), Some(MAX_POSITIVE_TTL));
    }

    #[test]
    fn denials_live_for_the_soa_minimum_rfc_2308_and_failures_not_at_all() {
        let nx = Err(DnssecFailure::NxDomain { secure: true });
        let r = response(ResponseCode::NXDomain, vec![], vec![soa(900, 120)]);
        assert_eq!(lifetime(&r, &nx), Some(Duration::from_secs(120)));
        let r = response(ResponseCode::NXDomain, vec![], vec![soa(60, 3600)]);
        assert_eq!(lifetime(&r, &nx), Some(Duration::from_secs(60)));
        let nodata = Err(DnssecFailure::NoData { secure: false });
        let r = response(ResponseCode::NoError, vec![], vec![soa(86_400, 86_400)]);
        assert_eq!(lifetime(&r, &nodata), Some(MAX_NEGATIVE_TTL));
        // No SOA: nothing says how long the denial holds.
        let r = response(ResponseCode::NXDomain, vec![], vec![]);
        assert_eq!(lifetime(&r, &nx), None);
        let servfail = Err(DnssecFailure::TempFail("SERVFAIL".into()));
        let r = response(ResponseCode::ServFail, vec![], vec![soa(900, 900)]);
        assert_eq!(lifetime(&r, &servfail), None);
    }

    /// Keeps, at `now`, an A answer for `owner` with `ttl`.
    fn put_a(cache: &AnswerCache, owner: &str, ttl: u32, now: Instant) {
        let r = response(ResponseCode::NoError, vec![a(owner, ttl)], vec![]);
        cache.put(&name(owner), RecordType::A, &r, &found(), now);
    }

    /// Whether an A answer for `owner` is served at `at`.
    fn has_a(cache: &AnswerCache, owner: &str, at: Instant) -> bool {
        cache.get(&name(owner), RecordType::A, at).is_some()
    }

    #[test]
    fn an_answer_is_served_until_it_expires_whatever_the_case_of_the_name() {
        let cache = AnswerCache::new(16, MAX_POSITIVE_TTL);
        let now = Instant::now();
        put_a(&cache, "MX.Example.TEST.", 30, now);
        let at = |secs| now + Duration::from_secs(secs);
        assert_eq!(
            cache.get(&name("mx.example.test."), RecordType::A, at(29)),
            Some(found())
        );
        assert_eq!(
            cache.get(&name("mx.example.test."), RecordType::AAAA, at(1)),
            None
        );
        assert!(!has_a(&cache, "mx.example.test.", at(30)));
        assert_eq!(cache.len(), 0, "an expired answer is dropped when found");
        // A zero TTL is not kept at all.
        put_a(&cache, "mx.example.test.", 0, now);
        assert!(!has_a(&cache, "mx.example.test.", now));
    }

    #[test]
    fn a_full_cache_drops_expired_answers_then_those_closest_to_expiry() {
        let cache = AnswerCache::new(10, MAX_POSITIVE_TTL);
        let now = Instant::now();
        for i in 0..10u32 {
            put_a(&cache, &format!("h{i}.example.test."), 10 + i, now);
        }
        assert_eq!(cache.len(), 10);
        put_a(&cache, "new.example.test.", 100, now);
        assert!(cache.len() <= 10);
        assert!(has_a(&cache, "new.example.test.", now));
        assert!(
            !has_a(&cache, "h0.example.test.", now),
            "the answer closest to expiry made room"
        );
        assert!(has_a(&cache, "h9.example.test.", now));
        // Later, with every old answer expired, one insert sweeps them all.
        let later = now + Duration::from_secs(50);
        put_a(&cache, "late.example.test.", 100, later);
        put_a(&cache, "late2.example.test.", 100, later);
        assert!(cache.len() <= 10);
        assert!(has_a(&cache, "new.example.test.", later));
    }

    #[test]
    fn max_ttl_caps_every_answer() {
        let cache = AnswerCache::new(16, Duration::from_secs(5));
        let now = Instant::now();
        put_a(&cache, "mx.example.test.", 3600, now);
        assert!(has_a(
            &cache,
            "mx.example.test.",
            now + Duration::from_secs(4)
        ));
        assert!(!has_a(
            &cache,
            "mx.example.test.",
            now + Duration::from_secs(5)
        ));
    }

    #[test]
    fn a_cache_of_size_zero_keeps_nothing() {
        let cache = AnswerCache::new(0, MAX_POSITIVE_TTL);
        put_a(&cache, "mx.example.test.", 30, Instant::now());
        assert_eq!(cache.len(), 0);
    }
}
