//! The cache's rules (RFC 8461 §5.1): when to fetch, what to keep, when to give up.

use crate::{CacheError, Clock, FailureRecord, Settings, StsLookup};
use std::sync::Arc;

pub(crate) struct Inner {}

impl Inner {
    pub(crate) fn open(
        _dir: &std::path::Path,
        _resolver: hickory_resolver::TokioResolver,
        _settings: Settings,
        _clock: Arc<dyn Clock>,
    ) -> Result<Inner, CacheError> {
        todo!("policy-cache: open")
    }
    pub(crate) async fn lookup(&self, _domain: &str) -> StsLookup {
        todo!("policy-cache: lookup")
    }
    pub(crate) async fn refresh(&self, _domain: &str) -> StsLookup {
        todo!("policy-cache: refresh")
    }
    pub(crate) fn forget(&self, _domain: &str) -> Result<bool, CacheError> {
        todo!("policy-cache: forget")
    }
    pub(crate) fn show(&self, _domain: &str) -> String {
        todo!("policy-cache: show")
    }
    pub(crate) fn record_failure(&self, _failure: FailureRecord) {
        todo!("policy-cache: record_failure")
    }
    pub(crate) fn failures(&self, _domain: &str) -> Vec<FailureRecord> {
        todo!("policy-cache: failures")
    }
    pub(crate) async fn run_refresher(&self, _shutdown: tokio::sync::watch::Receiver<bool>) {
        todo!("policy-cache: refresher")
    }
}
