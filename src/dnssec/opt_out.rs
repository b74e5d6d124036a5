//! RFC 5155 §9.2: a name error proven by an NSEC3 record with the Opt-Out flag covering the
//! "next closer" name is not a secure denial. Opt-Out lets unsigned delegations go without
//! NSEC3 records of their own, so the covered span may hold one: the name is only as secure as
//! an insecure delegation would be. hickory's validator calls such an NXDOMAIN secure;
//! validators such as unbound do not, and nor do we.

use hickory_resolver::proto::dnssec::rdata::{DNSSECRData, NSEC3};
use hickory_resolver::proto::rr::{Name, RData, Record};

/// Whether the NXDOMAIN for `qname`, with these `authorities`, rests on Opt-Out: the NSEC3 that
/// covers the next closer name (RFC 5155 §8.4, §7.2.1) has the Opt-Out flag set.
pub(crate) fn rests_on_opt_out(qname: &Name, authorities: &[Record]) -> bool {
    let nsec3: Vec<(String, &NSEC3)> = authorities
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::NSEC3(n)) => {
                let label = r.name.iter().next()?;
                Some((String::from_utf8_lossy(label).to_ascii_lowercase(), n))
            }
            _ => None,
        })
        .collect();
    let Some((_, first)) = nsec3.first() else {
        return false;
    };
    let hash = |name: &Name| -> Option<String> {
        let digest = first
            .hash_algorithm()
            .hash(first.salt(), name, first.iterations())
            .ok()?;
        Some(
            data_encoding::BASE32HEX_NOPAD
                .encode(digest.as_ref())
                .to_ascii_lowercase(),
        )
    };
    // Ancestors of qname, longest first: the closest encloser is the first whose hash an NSEC3
    // owner matches; the next closer name is the one before it.
    let mut ancestors = vec![qname.clone()];
    while !ancestors.last().is_some_and(Name::is_root) {
        let parent = ancestors
            .last()
            .map(Name::base_name)
            .unwrap_or_else(Name::root);
        ancestors.push(parent);
    }
    let matched = |h: &str| nsec3.iter().any(|(owner, _)| owner == h);
    let Some(ce) = ancestors
        .iter()
        .position(|a| hash(a).is_some_and(|h| matched(&h)))
    else {
        return false;
    };
    if ce == 0 {
        return false; // qname itself exists: not a name error
    }
    let Some(next_closer) = hash(&ancestors[ce - 1]) else {
        return false;
    };
    nsec3
        .iter()
        .find(|(owner, n)| covers(owner, n, &next_closer))
        .is_some_and(|(_, n)| n.opt_out())
}

/// Whether the NSEC3 at `owner` covers `hash`: strictly between its owner and next hashed
/// owner name, the last record of the chain wrapping around (RFC 5155 §1.3 "covers").
/// Base32hex keeps the order of the bytes, so the text compares as the hashes do.
fn covers(owner: &str, nsec3: &NSEC3, hash: &str) -> bool {
    let Some(next) = nsec3.next_hashed_owner_name_base32() else {
        return false;
    };
    let next = String::from_utf8_lossy(next.as_bytes()).to_ascii_lowercase();
    if owner < next.as_str() {
        owner < hash && hash < next.as_str()
    } else {
        hash > owner || hash < next.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::dnssec::Nsec3HashAlgorithm;
    use hickory_resolver::proto::rr::RecordType;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn hash(n: &str) -> Vec<u8> {
        Nsec3HashAlgorithm::SHA1
            .hash(&[], &name(n), 0)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// An NSEC3 record at hash `owner` in test., pointing to hash `next`.
    fn nsec3(owner: &[u8], next: &[u8], opt_out: bool) -> Record {
        let label = data_encoding::BASE32HEX_NOPAD
            .encode(owner)
            .to_ascii_lowercase();
        let rdata = NSEC3::new(
            Nsec3HashAlgorithm::SHA1,
            opt_out,
            0,
            Vec::new(),
            next.to_vec(),
            [RecordType::A],
        );
        Record::from_rdata(
            name(&format!("{label}.test.")),
            60,
            RData::DNSSEC(DNSSECRData::NSEC3(rdata)),
        )
    }

    /// Bytes just below and just above `h` (the hashes here never end in 0x00 or 0xff).
    fn around(h: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut below, mut above) = (h.to_vec(), h.to_vec());
        let last = h.len() - 1;
        below[last] = below[last].wrapping_sub(1);
        above[last] = above[last].wrapping_add(1);
        (below, above)
    }

    /// The closest encloser test. matched, the next closer name nothere.test. covered by an
    /// NSEC3 with or without Opt-Out.
    fn name_error(opt_out: bool) -> Vec<Record> {
        let apex = hash("test.");
        let (below, above) = around(&hash("nothere.test."));
        let (_, after_apex) = around(&apex);
        vec![
            nsec3(&apex, &after_apex, true),
            nsec3(&below, &above, opt_out),
        ]
    }

    #[test]
    fn a_name_error_covered_by_opt_out_is_not_proven() {
        assert!(rests_on_opt_out(&name("nothere.test."), &name_error(true)));
        // The apex's own NSEC3 carries the flag too, but only the covering one counts.
        assert!(!rests_on_opt_out(
            &name("nothere.test."),
            &name_error(false)
        ));
        // Two labels below the closest encloser: the next closer name is the one label below
        // it (nothere.test.), not the name asked for.
        assert!(rests_on_opt_out(
            &name("deeper.nothere.test."),
            &name_error(true)
        ));
        assert!(!rests_on_opt_out(
            &name("deeper.nothere.test."),
            &name_error(false)
        ));
    }

    #[test]
    fn without_nsec3_or_a_closest_encloser_nothing_rests_on_opt_out() {
        assert!(!rests_on_opt_out(&name("nothere.test."), &[]));
        let (below, above) = around(&hash("nothere.test."));
        assert!(!rests_on_opt_out(
            &name("nothere.test."),
            &[nsec3(&below, &above, true)]
        ));
    }

    #[test]
    fn coverage_wraps_around_the_end_of_the_chain() {
        let n = NSEC3::new(
            Nsec3HashAlgorithm::SHA1,
            true,
            0,
            Vec::new(),
            vec![0x10; 20],
            [],
        );
        let hex = |b: &[u8]| {
            data_encoding::BASE32HEX_NOPAD
                .encode(b)
                .to_ascii_lowercase()
        };
        let owner = hex(&[0xf0; 20]);
        assert!(covers(&owner, &n, &hex(&[0xf8; 20])));
        assert!(covers(&owner, &n, &hex(&[0x01; 20])));
        assert!(!covers(&owner, &n, &hex(&[0x80; 20])));
    }
}
