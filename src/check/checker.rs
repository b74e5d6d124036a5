//! The daemon's machinery for a check: resolvers, TLS checker, MTA-STS fetcher and the
//! destination table, built from the configuration as the daemon builds them.

use super::CheckSetupError;
use crate::config::Config;
use crate::delivery::dns;
use crate::delivery::tls::PkixChecker;
use crate::dnssec::SecureResolver;
use crate::tls_policy::TlsPolicies;
use hickory_resolver::TokioResolver;
use policy_cache::sts::fetch::Fetcher;

/// The daemon's look-up and TLS machinery, built from the configuration as `Deliverer::new`
/// and `control::open_cache` build it.
pub(super) struct Checker<'a> {
    pub config: &'a Config,
    pub resolver: TokioResolver,
    /// `None` with `dns.dnssec = "off"` (no DANE).
    pub secure: Option<SecureResolver>,
    pub pkix: PkixChecker,
    pub fetcher: Fetcher,
    /// The operator's minimum levels (`delivery.tls_policy_file`).
    pub tls_policies: TlsPolicies,
}

impl<'a> Checker<'a> {
    pub fn new(config: &'a Config) -> Result<Checker<'a>, CheckSetupError> {
        let resolver = dns::build_resolver(&config.dns)
            .map_err(|e| CheckSetupError::Resolver(e.to_string()))?;
        let secure = SecureResolver::from_config(&config.dns)?;
        let roots = crate::tls::root_store(&config.delivery.extra_ca_files)?;
        let (opportunistic, mandatory) = config
            .delivery
            .tls_profiles()
            .map_err(|(key, e)| CheckSetupError::Verifier(format!("delivery.{key}: {e}")))?;
        let pkix =
            PkixChecker::new(roots, opportunistic, mandatory).map_err(CheckSetupError::Verifier)?;
        let fetcher = Fetcher::new(&config.policy_settings(), resolver.clone())
            .map_err(|e| CheckSetupError::Fetcher(e.to_string()))?;
        let tls_policies = TlsPolicies::open(
            config.delivery.tls_policy_file.as_deref(),
            config.delivery.sender_tls_policy_file.as_deref(),
        )
        .map_err(|e| CheckSetupError::TlsPolicy(e.to_string()))?;
        Ok(Checker {
            config,
            resolver,
            secure,
            pkix,
            fetcher,
            tls_policies,
        })
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
