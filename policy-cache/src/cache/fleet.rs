//! The policy cache of a fleet (`[cache] backend = "redis"`): every node uses a policy any
//! node fetched, and one node at a time fetches a domain's policy.
//!
//! Each node keeps its own cache (memory and sled) exactly as a single node does; the shared
//! store ([`crate::shared`]) is consulted where a node would otherwise fetch:
//! - before a fetch (a first lookup, a new TXT `id`), a shared copy of the policy under that
//!   `id`, unexpired, is adopted as it is (with its original fetch time, so it expires when
//!   the fetching node's copy does); else the node takes the domain's fetch lease (`SET NX
//!   PX`) and fetches, or, when another node holds the lease, waits for that node's result (at
//!   most the fetch timeout) before fetching itself;
//! - a fresh fetch is published at once (`policy:<domain>`, kept until it expires);
//! - the background refresher first looks for a copy fetched after its own; a node that finds
//!   the lease taken leaves the refetch to the holder and looks again shortly (see
//!   [`LEASE_HELD_RETRY`]), keeping its cached policy meanwhile.
//!
//! The shared store never decides anything a node could not have decided alone: a shared copy
//! is used only when its `id` is the one the TXT record announces now, and only while
//! unexpired; with Redis down, each node works from its local copy, and a policy neither has is
//! a cache miss, fetched as without Redis.

use super::Inner;
use crate::shared::{lease_token, Down};
use crate::{ActivePolicy, Policy};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// How soon a refresher that found another node refreshing looks for its result.
pub(super) const LEASE_HELD_RETRY: Duration = Duration::from_secs(30);

/// How often a node waiting for another node's fetch looks for its result.
const WAIT_STEP: Duration = Duration::from_millis(200);

/// A policy as the fleet shares it: what was fetched, under which TXT `id`, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SharedPolicy {
    pub id: String,
    pub policy: Policy,
    pub fetched_at: SystemTime,
    pub expires_at: SystemTime,
}

/// The outcome of asking for a domain's fetch lease.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lease {
    /// Ours, under this token, until released or expired.
    Ours(String),
    /// Another node holds it: it is fetching.
    Theirs,
    /// No shared store, or it is down: fetch as a single node does.
    Alone,
}

fn policy_key(domain: &str) -> String {
    format!("sts:policy:{domain}")
}

fn lease_key(domain: &str) -> String {
    format!("sts:lease:{domain}")
}

impl Inner {
    /// The shared copy of `domain`'s policy fetched under `id`, if one is there, unexpired,
    /// and (with `newer_than`) fetched after that time.
    pub(super) async fn shared_policy(
        &self,
        domain: &str,
        id: &str,
        newer_than: Option<SystemTime>,
    ) -> Option<SharedPolicy> {
        let shared = self.shared.as_ref()?;
        let bytes = shared.get(&policy_key(domain)).await.ok()??;
        let copy: SharedPolicy = match serde_json::from_slice(&bytes) {
            Ok(copy) => copy,
            Err(e) => {
                tracing::warn!(domain, error = %e, "MTA-STS: shared policy does not decode; ignored");
                return None;
            }
        };
        let usable = copy.id == id
            && copy.expires_at > self.clock.now()
            && newer_than.is_none_or(|t| copy.fetched_at > t);
        usable.then_some(copy)
    }

    /// Shares a policy this node just fetched, for as long as it is valid.
    pub(super) async fn publish(&self, active: &ActivePolicy) {
        let Some(shared) = &self.shared else { return };
        let copy = SharedPolicy {
            id: active.id.clone(),
            policy: active.policy.clone(),
            fetched_at: active.fetched_at,
            expires_at: active.expires_at,
        };
        let ttl = active
            .expires_at
            .duration_since(self.clock.now())
            .unwrap_or_default();
        if ttl.is_zero() {
            return;
        }
        match serde_json::to_vec(&copy) {
            Ok(bytes) => {
                if shared
                    .set(&policy_key(&active.domain), &bytes, ttl)
                    .await
                    .is_ok()
                {
                    tracing::debug!(domain = active.domain, "MTA-STS: policy shared");
                }
            }
            Err(e) => {
                tracing::warn!(domain = active.domain, error = %e, "MTA-STS: cannot share policy")
            }
        }
    }

    /// Asks for `domain`'s fetch lease, held at most as long as a fetch may take.
    pub(super) async fn take_lease(&self, domain: &str) -> Lease {
        let Some(shared) = &self.shared else {
            return Lease::Alone;
        };
        let token = lease_token();
        let ttl = self.settings.fetch_timeout + Duration::from_secs(2);
        match shared.lease(&lease_key(domain), &token, ttl).await {
            Ok(true) => Lease::Ours(token),
            Ok(false) => Lease::Theirs,
            Err(Down) => Lease::Alone,
        }
    }

    pub(super) async fn release_lease(&self, domain: &str, lease: Lease) {
        if let (Some(shared), Lease::Ours(token)) = (&self.shared, lease) {
            shared.release(&lease_key(domain), &token).await;
        }
    }

    /// Waits, at most as long as a fetch may take, for the node holding `domain`'s lease to
    /// share the policy under `id`.
    pub(super) async fn await_shared(&self, domain: &str, id: &str) -> Option<SharedPolicy> {
        let deadline = tokio::time::Instant::now() + self.settings.fetch_timeout;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(WAIT_STEP).await;
            if let Some(copy) = self.shared_policy(domain, id, None).await {
                return Some(copy);
            }
            if self.shared.as_ref().is_some_and(|s| s.is_down()) {
                return None;
            }
        }
        None
    }

    /// Installs a copy another node fetched, as fetched then.
    pub(super) async fn adopt(
        &self,
        domain: &str,
        copy: SharedPolicy,
        used: bool,
    ) -> std::sync::Arc<ActivePolicy> {
        tracing::info!(
            domain,
            id = copy.id,
            "MTA-STS: using the policy another node fetched (shared cache)"
        );
        self.install_fetched(domain, &copy.id, copy.policy, copy.fetched_at, used)
            .await
    }
}
