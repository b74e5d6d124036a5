//! `mxguard dns NAME [TYPE]`: one look-up through the resolver delivery uses for DANE
//! (`[dns] dnssec`), printed with its DNSSEC verdict, like `delv`. For operators checking a
//! private trust anchor, and for comparing verdicts with another validator.

use crate::config::{DnsConfig, DnssecMode};
use crate::dnssec::{SecureResolver, Security};
use hickory_resolver::proto::rr::{Name, RecordType};
use std::str::FromStr;

/// The verdict line (`NAME TYPE: secure`, `… insecure`, `… bogus: why`, `… NXDOMAIN (secure)`,
/// `… no records (insecure)`, `… lookup failed: why`), then one record a line. `Err` for a
/// bad name or type, or `dnssec = "off"`.
pub async fn lookup(config: &DnsConfig, name: &str, rtype: &str) -> Result<String, String> {
    if config.dnssec == DnssecMode::Off {
        return Err("dns.dnssec is \"off\": there is no DNSSEC verdict to show".into());
    }
    let mut name = Name::from_str(name).map_err(|e| format!("bad name {name:?}: {e}"))?;
    name.set_fqdn(true);
    let rtype = RecordType::from_str(&rtype.to_ascii_uppercase())
        .map_err(|e| format!("bad record type {rtype:?}: {e}"))?;
    let resolver = SecureResolver::from_config(config)
        .map_err(|e| e.to_string())?
        .ok_or("no DNSSEC resolver")?;
    let mut out = format!("{name} {rtype}: ");
    match resolver.lookup(&name, rtype).await {
        Ok(secured) => {
            out.push_str(match secured.status {
                Security::Secure => "secure",
                Security::Insecure => "insecure",
            });
            for r in &secured.records {
                out.push_str(&format!("\n  {r}"));
            }
        }
        Err(failure) => out.push_str(&failure.to_string()),
    }
    Ok(out)
}
