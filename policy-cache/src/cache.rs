//! The cache's rules (RFC 8461 §5.1): when to fetch, what to keep, when to give up.
//!
//! Every lookup asks DNS for `_mta-sts.<domain>` (hickory's own cache keeps that cheap within the
//! record's TTL), then [`decide::decide`] picks one step from what is cached: use the cached
//! policy, fetch the announced one, or answer without a policy. Fetched policies live in memory
//! (so a cache hit is a map read and an `Arc` clone) and in sled (so they survive restarts).
//! Fetches for one domain are serialized, so a burst of messages to a new domain fetches once.

mod decide;
mod fleet;
mod refresher;
mod show;

pub use refresher::RefreshSummary;

use crate::store::{Negative, Store, StoredPolicy};
use crate::sts::fetch::Fetcher;
use crate::sts::policy::normalize_name;
use crate::sts::record::{parse_records, RecordError};
use crate::{ActivePolicy, CacheError, Clock, FailureRecord, Policy, Settings, StsLookup};
use decide::{after_failed_fetch, decide, Kept, Step, Txt};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `last_used` is written to sled at most this often per entry: often enough for the disuse
/// rule (`unused_after` is days), rarely enough that a cache hit stays a memory operation.
const LAST_USED_SAVE_INTERVAL: u64 = 3600;

/// A cached policy in memory: the answer lookups hand out, and the bookkeeping of the refresher
/// and the disuse rule (unix seconds in atomics, so a cache hit needs only a read lock).
pub(crate) struct Entry {
    active: Arc<ActivePolicy>,
    /// When the refresher should refetch it.
    refresh_at: AtomicU64,
    /// The last lookup that used it.
    last_used: AtomicU64,
    /// The `last_used` value last written to sled.
    last_used_saved: AtomicU64,
}

impl Entry {
    fn new(active: Arc<ActivePolicy>, refresh_at: SystemTime, last_used: SystemTime) -> Entry {
        Entry {
            active,
            refresh_at: AtomicU64::new(unix(refresh_at)),
            last_used: AtomicU64::new(unix(last_used)),
            last_used_saved: AtomicU64::new(unix(last_used)),
        }
    }

    fn from_stored(domain: &str, stored: StoredPolicy) -> Entry {
        let refresh_at = stored
            .refresh_at
            .unwrap_or_else(|| refresher::schedule(stored.fetched_at, stored.policy.max_age));
        let active = Arc::new(ActivePolicy {
            domain: domain.to_string(),
            id: stored.id,
            policy: stored.policy,
            fetched_at: stored.fetched_at,
            expires_at: stored.expires_at,
        });
        Entry::new(active, refresh_at, stored.last_used)
    }

    fn to_stored(&self) -> StoredPolicy {
        StoredPolicy {
            id: self.active.id.clone(),
            policy: self.active.policy.clone(),
            fetched_at: self.active.fetched_at,
            expires_at: self.active.expires_at,
            last_used: from_unix(self.last_used.load(Ordering::Relaxed)),
            refresh_at: Some(from_unix(self.refresh_at.load(Ordering::Relaxed))),
        }
    }

    fn last_used(&self) -> SystemTime {
        from_unix(self.last_used.load(Ordering::Relaxed))
    }

    fn refresh_at(&self) -> SystemTime {
        from_unix(self.refresh_at.load(Ordering::Relaxed))
    }
}

pub(crate) struct Inner {
    /// The durable copy.
    store: Store,
    /// The policies, by domain (lower case, A-labels): what a cache hit reads.
    policies: RwLock<HashMap<String, Arc<Entry>>>,
    /// Recent failed fetches, by domain.
    negatives: RwLock<HashMap<String, Arc<Negative>>>,
    /// One lock per domain being fetched, so concurrent lookups fetch once.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    resolver: TokioResolver,
    fetcher: Fetcher,
    settings: Settings,
    clock: Arc<dyn Clock>,
    fetch_observer: std::sync::OnceLock<crate::FetchObserver>,
    /// The fleet's shared store, with `[cache] backend = "redis"`.
    shared: Option<crate::shared::Shared>,
}

impl Inner {
    pub(crate) fn open(
        dir: &std::path::Path,
        resolver: TokioResolver,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Inner, CacheError> {
        let store = Store::open(dir);
        let fetcher = Fetcher::new(&settings, resolver.clone())?;
        let shared = match &settings.shared {
            Some(s) => Some(crate::shared::Shared::new(s).map_err(CacheError::Setup)?),
            None => None,
        };
        let policies = store
            .policies()
            .into_iter()
            .map(|(domain, stored)| {
                let entry = Entry::from_stored(&domain, stored);
                (domain, Arc::new(entry))
            })
            .collect();
        let negatives = store
            .negatives()
            .into_iter()
            .map(|(domain, n)| (domain, Arc::new(n)))
            .collect();
        Ok(Inner {
            store,
            policies: RwLock::new(policies),
            negatives: RwLock::new(negatives),
            gates: Mutex::new(HashMap::new()),
            resolver,
            fetcher,
            settings,
            clock,
            fetch_observer: std::sync::OnceLock::new(),
            shared,
        })
    }

    pub(crate) fn in_memory(&self) -> bool {
        self.store.in_memory()
    }

    pub(crate) async fn lookup(&self, domain: &str) -> StsLookup {
        let Some(domain) = normalize_name(domain) else {
            return no_policy(format!("{domain:?} is not a valid domain name"));
        };
        let txt = self.txt_lookup(&domain).await;
        self.resolve(&domain, &txt).await
    }

    pub(crate) async fn refresh(&self, domain: &str) -> StsLookup {
        let Some(domain) = normalize_name(domain) else {
            return no_policy(format!("{domain:?} is not a valid domain name"));
        };
        let txt = self.txt_lookup(&domain).await;
        match &txt {
            // RFC 8461 §3.1: without a valid TXT record there is nothing to fetch; what lookup
            // answers (the cache until it expires) stands.
            Txt::Record(record) => {
                let gate = self.gate(&domain);
                let _fetching = gate.lock().await;
                // The operator asked for a fetch: no shared copy stands in for it.
                self.fetch_here(&domain, &record.id).await
            }
            _ => self.resolve(&domain, &txt).await,
        }
    }

    pub(crate) fn forget(&self, domain: &str) -> bool {
        let domain = cache_key(domain);
        let in_memory = write(&self.policies).remove(&domain).is_some();
        let negative = write(&self.negatives).remove(&domain).is_some();
        let stored = self.store.forget(&domain);
        let forgot = in_memory || negative || stored;
        if forgot {
            tracing::info!(domain, "MTA-STS: cached policy forgotten");
        }
        forgot
    }

    pub(crate) fn show(&self, domain: &str) -> String {
        let domain = cache_key(domain);
        let entry = self.entry(&domain);
        let negative = self.negative(&domain);
        show::render(
            &domain,
            entry.as_deref(),
            negative.as_deref(),
            &self.store.failures(&domain),
        )
    }

    pub(crate) fn record_failure(&self, mut failure: FailureRecord) {
        failure.domain = cache_key(&failure.domain);
        if let Err(e) = self.store.push_failure(&failure) {
            tracing::warn!(domain = failure.domain, error = %e, "MTA-STS: cannot record failure");
        }
    }

    pub(crate) fn failures(&self, domain: &str) -> Vec<FailureRecord> {
        self.store.failures(&cache_key(domain))
    }

    /// Decides with what is cached now, and fetches if that is the step.
    async fn resolve(&self, domain: &str, txt: &Txt) -> StsLookup {
        match self.decide_now(domain, txt) {
            Step::Fetch { .. } => self.fetch_gated(domain, txt).await,
            step => self.answer_after(domain, txt, step),
        }
    }

    /// Fetches under the domain's gate, unless a concurrent lookup did it while this one
    /// waited (then the decision, taken again, finds its result).
    async fn fetch_gated(&self, domain: &str, txt: &Txt) -> StsLookup {
        let gate = self.gate(domain);
        let _fetching = gate.lock().await;
        match self.decide_now(domain, txt) {
            Step::Fetch { id } => self.fetch_and_install(domain, &id).await,
            step => self.answer_after(domain, txt, step),
        }
    }

    /// [`Self::answer`], marked with the remembered fetch failure when "no policy" comes from
    /// a recent failure to fetch the announced policy (RFC 8461 §3.3's pause between tries):
    /// the domain's policy still failed for this delivery.
    fn answer_after(&self, domain: &str, txt: &Txt, step: Step) -> StsLookup {
        let answer = self.answer(domain, step);
        let Txt::Record(record) = txt else {
            return answer;
        };
        match self.negative(domain) {
            Some(n) if n.id == record.id => {
                with_fetch_failure(answer, stored_result_type(&n), &n.error)
            }
            _ => answer,
        }
    }

    fn decide_now(&self, domain: &str, txt: &Txt) -> Step {
        let entry = self.entry(domain);
        let negative = self.negative(domain);
        decide(
            entry.as_deref().map(|e| &*e.active),
            negative.as_deref(),
            txt,
            self.clock.now(),
            self.settings.negative_ttl,
        )
    }

    /// Turns a step other than a fetch into the lookup's answer, logging the decisions that
    /// matter.
    fn answer(&self, domain: &str, step: Step) -> StsLookup {
        match step {
            Step::UseCached(kept) => match self.entry(domain) {
                Some(entry) => {
                    log_kept(domain, &entry.active, kept);
                    self.touch(domain, &entry);
                    StsLookup::Policy(entry.active.clone())
                }
                None => no_policy("the cached policy was just forgotten".into()),
            },
            Step::NoPolicy(reason) => {
                tracing::debug!(domain, reason, "MTA-STS: no policy");
                no_policy(reason)
            }
            Step::TempFail(reason) => {
                tracing::warn!(domain, reason, "MTA-STS: cannot tell now");
                StsLookup::TempFail { reason }
            }
            // `resolve` fetches before it gets here.
            Step::Fetch { id } => StsLookup::TempFail {
                reason: format!("policy {id} not fetched yet"),
            },
        }
    }

    /// The policy a lookup found it must fetch: a copy another node of the fleet fetched
    /// under the same `id`, or one fetched here (by one node at a time, see [`fleet`]).
    async fn fetch_and_install(&self, domain: &str, id: &str) -> StsLookup {
        if let Some(copy) = self.shared_policy(domain, id, None).await {
            return StsLookup::Policy(self.adopt(domain, copy, true).await);
        }
        let lease = self.take_lease(domain).await;
        if lease == fleet::Lease::Theirs {
            if let Some(copy) = self.await_shared(domain, id).await {
                return StsLookup::Policy(self.adopt(domain, copy, true).await);
            }
        }
        let answer = self.fetch_here(domain, id).await;
        self.release_lease(domain, lease).await;
        answer
    }

    /// Fetches and parses the policy; installs (and shares) it on success, else remembers the
    /// failure and falls back on the cache.
    async fn fetch_here(&self, domain: &str, id: &str) -> StsLookup {
        match self.fetch_policy(domain).await {
            Ok(policy) => {
                let active = self.install(domain, id, policy, true).await;
                self.publish(&active).await;
                StsLookup::Policy(active)
            }
            Err((error, result_type)) => {
                tracing::warn!(domain, id, error, "MTA-STS: policy fetch failed");
                self.remember_failure(domain, id, &error, result_type);
                let entry = self.entry(domain);
                let step = after_failed_fetch(
                    entry.as_deref().map(|e| &*e.active),
                    self.clock.now(),
                    &error,
                );
                with_fetch_failure(self.answer(domain, step), result_type, &error)
            }
        }
    }

    /// The policy text over HTTPS, parsed. RFC 8461 §3.2: a policy that does not parse is a
    /// failed fetch, never "no policy".
    /// On failure, why, and the RFC 8460 §4.3.1 result type.
    async fn fetch_policy(&self, domain: &str) -> Result<Policy, (String, &'static str)> {
        let fetched = self.fetch_policy_unobserved(domain).await;
        if let Some(observe) = self.fetch_observer.get() {
            observe(
                fetched
                    .as_ref()
                    .map_or_else(|(_, result_type)| *result_type, |_| "ok"),
            );
        }
        fetched
    }

    pub(crate) fn observe_fetches(&self, observer: crate::FetchObserver) {
        let _ = self.fetch_observer.set(observer);
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.policies).len()
    }

    async fn fetch_policy_unobserved(
        &self,
        domain: &str,
    ) -> Result<Policy, (String, &'static str)> {
        let text = self.fetcher.fetch(domain).await.map_err(|e| {
            let result_type = match e {
                // The policy host could not be authenticated (its certificate).
                crate::sts::fetch::FetchError::Tls(_) => "sts-webpki-invalid",
                _ => "sts-policy-fetch-error",
            };
            (e.to_string(), result_type)
        })?;
        Policy::parse(&text).map_err(|e| (format!("invalid policy: {e}"), "sts-policy-invalid"))
    }

    /// Stores a freshly fetched policy, in memory and durably (flushed: a restart must not
    /// refetch what was just fetched). `used` says a delivery asked for it (a background
    /// refresh is not a use).
    async fn install(
        &self,
        domain: &str,
        id: &str,
        policy: Policy,
        used: bool,
    ) -> Arc<ActivePolicy> {
        let now = self.clock.now();
        self.install_fetched(domain, id, policy, now, used).await
    }

    /// [`Self::install`] for a policy fetched at `fetched_at` (by another node of the fleet:
    /// it expires, and is refreshed, as that node's copy is).
    async fn install_fetched(
        &self,
        domain: &str,
        id: &str,
        policy: Policy,
        fetched_at: SystemTime,
        used: bool,
    ) -> Arc<ActivePolicy> {
        let now = self.clock.now();
        let previous = self.entry(domain);
        let last_used = match (&previous, used) {
            (Some(old), false) => old.last_used(),
            _ => now,
        };
        // RFC 8461 §3.2: a policy is cached for max_age seconds from when it was fetched.
        let max_age = policy.max_age;
        let active = Arc::new(ActivePolicy {
            domain: domain.to_string(),
            id: id.to_string(),
            policy,
            fetched_at,
            expires_at: fetched_at
                .checked_add(Duration::from_secs(u64::from(max_age)))
                .unwrap_or(fetched_at),
        });
        let refresh_at = refresher::schedule(fetched_at, max_age);
        let entry = Arc::new(Entry::new(active.clone(), refresh_at, last_used));
        log_installed(domain, &active, previous.as_deref());
        let saved = self.store.put_policy(domain, &entry.to_stored());
        write(&self.policies).insert(domain.to_string(), entry);
        self.clear_negative(domain);
        match saved {
            Ok(()) => self.store.flush_async().await,
            Err(e) => tracing::warn!(domain, error = %e, "MTA-STS: cannot save policy"),
        }
        active
    }

    fn remember_failure(&self, domain: &str, id: &str, error: &str, result_type: &str) {
        let negative = Negative {
            id: id.to_string(),
            failed_at: self.clock.now(),
            error: error.to_string(),
            result_type: Some(result_type.to_string()),
        };
        if let Err(e) = self.store.put_negative(domain, &negative) {
            tracing::warn!(domain, error = %e, "MTA-STS: cannot save negative entry");
        }
        write(&self.negatives).insert(domain.to_string(), Arc::new(negative));
    }

    fn clear_negative(&self, domain: &str) {
        if write(&self.negatives).remove(domain).is_some() {
            self.store.remove_negative(domain);
        }
    }

    /// Notes a use; saves it to sled only when the saved value is an hour old.
    fn touch(&self, domain: &str, entry: &Entry) {
        let now = unix(self.clock.now());
        entry.last_used.store(now, Ordering::Relaxed);
        let saved = entry.last_used_saved.load(Ordering::Relaxed);
        if now < saved.saturating_add(LAST_USED_SAVE_INTERVAL) {
            return;
        }
        let claimed = entry
            .last_used_saved
            .compare_exchange(saved, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if claimed {
            if let Err(e) = self.store.put_policy(domain, &entry.to_stored()) {
                tracing::warn!(domain, error = %e, "MTA-STS: cannot save last use");
            }
        }
    }

    /// Looks up `_mta-sts.<domain>.` (absolute: no search domains; CNAMEs are followed by the
    /// resolver) and classifies the answer.
    async fn txt_lookup(&self, domain: &str) -> Txt {
        let name = match Name::from_ascii(format!("_mta-sts.{domain}.")) {
            Ok(name) => name,
            Err(e) => return Txt::DnsFailure(format!("bad name: {e}")),
        };
        let txt = classify_txt(self.resolver.lookup(name, RecordType::TXT).await);
        match &txt {
            Txt::Invalid(e) => {
                tracing::warn!(domain, error = %e, "MTA-STS: invalid TXT record, treated as none");
            }
            Txt::DnsFailure(e) => tracing::warn!(domain, error = e, "MTA-STS: TXT lookup failed"),
            _ => {}
        }
        txt
    }

    fn entry(&self, domain: &str) -> Option<Arc<Entry>> {
        read(&self.policies).get(domain).cloned()
    }

    fn negative(&self, domain: &str) -> Option<Arc<Negative>> {
        read(&self.negatives).get(domain).cloned()
    }

    fn gate(&self, domain: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.entry(domain.to_string()).or_default().clone()
    }
}

/// RFC 8461 §3.1: NXDOMAIN and NODATA mean no record; other errors say nothing about the
/// domain. TXT records of several strings are concatenated.
fn classify_txt(result: Result<hickory_resolver::lookup::Lookup, NetError>) -> Txt {
    let answer = match result {
        Ok(answer) => answer,
        Err(NetError::Dns(DnsError::NoRecordsFound(nr)))
            if matches!(
                nr.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
        {
            return Txt::Absent
        }
        Err(e) => return Txt::DnsFailure(e.to_string()),
    };
    let records: Vec<String> = answer
        .answers()
        .iter()
        .filter_map(|r| crate::sts::record::txt_text(&r.data))
        .collect();
    match parse_records(&records) {
        Ok(record) => Txt::Record(record),
        Err(RecordError::None) => Txt::Absent,
        Err(e) => Txt::Invalid(e),
    }
}

fn log_kept(domain: &str, active: &ActivePolicy, kept: Kept) {
    let why = match kept {
        Kept::Current => return,
        Kept::TxtGone => "TXT record gone or invalid",
        Kept::DnsFailure => "TXT lookup failed",
        Kept::RecentFailure => "the announced policy failed to fetch recently",
        Kept::FetchFailed => "the announced policy failed to fetch",
    };
    tracing::info!(
        domain,
        id = active.id,
        why,
        "MTA-STS: kept the cached policy until it expires"
    );
}

fn log_installed(domain: &str, active: &ActivePolicy, previous: Option<&Entry>) {
    let mode = active.policy.mode.as_str();
    let max_age = active.policy.max_age;
    match previous.map(|p| p.active.id.as_str()) {
        Some(old) if old == active.id => {
            tracing::debug!(
                domain,
                id = active.id,
                mode,
                max_age,
                "MTA-STS: policy refreshed"
            );
        }
        old => tracing::info!(
            domain,
            id = active.id,
            old_id = old,
            mode,
            max_age,
            "MTA-STS: new policy"
        ),
    }
}

fn no_policy(reason: String) -> StsLookup {
    StsLookup::NoPolicy {
        reason,
        fetch_failure: None,
    }
}

/// `lookup`, marked with the fetch failure behind it when it is "no policy" (a cached policy
/// still applying is no failure to report).
fn with_fetch_failure(lookup: StsLookup, result_type: &'static str, error: &str) -> StsLookup {
    match lookup {
        StsLookup::NoPolicy { reason, .. } => StsLookup::NoPolicy {
            reason,
            fetch_failure: Some(crate::FetchFailure {
                result_type,
                detail: error.to_string(),
            }),
        },
        other => other,
    }
}

/// The RFC 8460 result type a remembered failure was stored with.
fn stored_result_type(negative: &Negative) -> &'static str {
    match negative.result_type.as_deref() {
        Some("sts-webpki-invalid") => "sts-webpki-invalid",
        Some("sts-policy-invalid") => "sts-policy-invalid",
        _ => "sts-policy-fetch-error",
    }
}

/// The key a domain is cached under; names that do not normalize are kept lower-cased, so
/// `forget` and `show` still reach whatever they name.
fn cache_key(domain: &str) -> String {
    normalize_name(domain).unwrap_or_else(|| domain.trim_end_matches('.').to_ascii_lowercase())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

/// A poisoned lock only means another thread panicked mid-update of a map of `Arc`s, which
/// leaves nothing half-written: carry on with it.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
