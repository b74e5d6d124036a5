//! A hickory resolver for code under test that takes one (the MTA-STS policy cache and
//! fetcher): it asks only the lab's DNS server, over UDP and TCP.

use super::Lab;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::time::Duration;

impl Lab {
    /// A resolver that asks only the lab's DNS server, never the hosts file, and caches
    /// nothing, so that a zone change is seen at once (production relies on hickory's
    /// TTL-bound cache).
    pub fn resolver(&self) -> TokioResolver {
        let addr = self.dns.addr();
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = addr.port();
        let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], vec![ns]),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = Duration::from_secs(2);
        opts.cache_size = 0;
        builder.build().expect("lab resolver")
    }
}
