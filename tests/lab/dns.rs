//! The lab's DNS: an in-process authoritative server (hickory-server) on a loopback address,
//! UDP and TCP on one port, serving zones a test builds fluently:
//!
//! ```ignore
//! Zone::new("example.test").mx(10, "mx1.example.test").a("mx1.example.test", ip)
//! ```
//!
//! Failure modes a test needs, in the words of RFC 1035 §4.1.1:
//! - a name inside a served zone that has no records is NXDOMAIN (the authority answers);
//! - a name under no served zone is REFUSED (a resolver treats it as a temporary failure);
//! - a domain marked with [`DnsServer::servfail`] answers SERVFAIL for itself and every name
//!   below it until [`DnsServer::heal`] is called.
//!
//! Zones can be added, replaced and removed while the relay runs, so a test can "fix the DNS".
//! Records carry a short TTL (one second) so that the relay's resolver cache never hides such a
//! change for long.
//!
//! DNSSEC ([`dnssec`]): [`Zone::signed`] serves a zone signed online with NSEC3 denial;
//! [`Zone::tamper`] makes one of its RRsets bogus; a zone left unsigned is insecure once a signed
//! parent says so, which [`DnsServer::sign_root`] provides: a signed `test.` above every lab zone,
//! whose key ([`DnsServer::trust_anchor`]) is the relay's one trust anchor. A DS query for the
//! apex of a lab zone is answered by its parent zone when that parent is signed, as on the real
//! Internet (RFC 4035 §3.1.4.1), not by the zone itself.

#[path = "dnssec.rs"]
pub mod dnssec;

use dnssec::ZoneKey;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TLSA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use hickory_server::Server;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// TTL of every lab record: short, so a changed zone is seen by the relay within a second or two.
pub const LAB_TTL: u32 = 1;

/// Parses a domain name as written in a test, always fully qualified.
pub fn name(text: &str) -> Name {
    let mut n = Name::from_ascii(text).unwrap_or_else(|e| panic!("bad DNS name {text:?}: {e}"));
    n.set_fqdn(true);
    n
}

/// One zone's contents, built fluently. The origin's SOA and NS are added by [`Zone::new`].
#[derive(Clone, Debug)]
pub struct Zone {
    origin: Name,
    records: Vec<Record>,
    /// The key the zone is signed with when served, or `None` for an unsigned zone.
    key: Option<ZoneKey>,
    /// RRsets served in place of the signed ones, keeping the original signatures (bogus data).
    tampered: Vec<Record>,
}

impl Zone {
    pub fn new(origin: &str) -> Zone {
        let origin = name(origin);
        let ns = name(&format!("ns.{origin}"));
        let soa = SOA::new(
            ns.clone(),
            name(&format!("hostmaster.{origin}")),
            1,
            3600,
            600,
            86400,
            LAB_TTL,
        );
        Zone {
            records: vec![
                Record::from_rdata(origin.clone(), LAB_TTL, RData::SOA(soa)),
                Record::from_rdata(origin.clone(), LAB_TTL, RData::NS(NS(ns))),
            ],
            origin,
            key: None,
            tampered: Vec::new(),
        }
    }

    /// Serves the zone DNSSEC-signed (NSEC3 denial) with a freshly generated key.
    pub fn signed(self) -> Zone {
        self.signed_with(ZoneKey::generate())
    }

    /// Serves the zone DNSSEC-signed with `key` (a test that needs the key beforehand, e.g. to
    /// write a trust anchor, or that re-adds a zone under the same key).
    pub fn signed_with(mut self, key: ZoneKey) -> Zone {
        self.key = Some(key);
        self
    }

    /// The zone's signing key; `None` for an unsigned zone.
    pub fn key(&self) -> Option<&ZoneKey> {
        self.key.as_ref()
    }

    /// The trust-anchor line for this signed zone's own key (`example.test. IN DNSKEY 257 3 13
    /// …`), for a validator anchored at the zone itself rather than at the lab root.
    pub fn trust_anchor(&self) -> String {
        let key = self
            .key
            .as_ref()
            .unwrap_or_else(|| panic!("zone {} is not signed", self.origin));
        key.trust_anchor(&self.origin)
    }

    /// Makes the zone bogus at one RRset: after signing, `owner` serves `rdata` as its whole
    /// RRset of that type, under the signatures made for the original records, so a validating
    /// resolver must reject it (RFC 4035 §5.3). The RRset must exist; the zone must be signed.
    pub fn tamper(mut self, owner: &str, rdata: RData) -> Zone {
        self.tampered
            .push(Record::from_rdata(name(owner), LAB_TTL, rdata));
        self
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// Any record; the fluent helpers below all end here.
    pub fn record(mut self, owner: &str, rdata: RData) -> Zone {
        let owner = name(owner);
        assert!(
            self.origin.zone_of(&owner),
            "{owner} is not inside zone {}",
            self.origin
        );
        self.records.push(Record::from_rdata(owner, LAB_TTL, rdata));
        self
    }

    /// An MX record at the zone's origin.
    pub fn mx(self, preference: u16, exchange: &str) -> Zone {
        let origin = self.origin.to_string();
        self.mx_at(&origin, preference, exchange)
    }

    /// An MX record at any name of the zone.
    pub fn mx_at(self, owner: &str, preference: u16, exchange: &str) -> Zone {
        self.record(owner, RData::MX(MX::new(preference, name(exchange))))
    }

    /// RFC 7505 null MX (`0 .`) at the origin: "this domain accepts no mail".
    pub fn null_mx(self) -> Zone {
        let origin = self.origin.to_string();
        self.record(&origin, RData::MX(MX::new(0, Name::root())))
    }

    pub fn a(self, owner: &str, ip: Ipv4Addr) -> Zone {
        self.record(owner, RData::A(A(ip)))
    }

    pub fn aaaa(self, owner: &str, ip: Ipv6Addr) -> Zone {
        self.record(owner, RData::AAAA(AAAA(ip)))
    }

    /// A TXT record of one string.
    pub fn txt(self, owner: &str, text: &str) -> Zone {
        self.record(owner, RData::TXT(TXT::new(vec![text.to_string()])))
    }

    pub fn cname(self, owner: &str, target: &str) -> Zone {
        self.record(owner, RData::CNAME(CNAME(name(target))))
    }

    /// A TLSA record (RFC 6698 §2), e.g. `.tlsa("_25._tcp.mx.example.test", 3, 1, 1, &digest)`
    /// for DANE-EE, SPKI, SHA-256.
    pub fn tlsa(self, owner: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> Zone {
        let tlsa = TLSA::new(
            CertUsage::from(usage),
            Selector::from(selector),
            Matching::from(matching),
            data.to_vec(),
        );
        self.record(owner, RData::TLSA(tlsa))
    }

    /// The zone handler hickory serves this zone from. `delegations` are the NS and DS records
    /// of child zones, added to a signed zone so that it can prove their DS (or its absence).
    fn handler(&self, delegations: &[Record]) -> InMemoryZoneHandler<TokioRuntimeProvider> {
        let proofs = self.key.as_ref().map(|_| dnssec::nsec3());
        let mut handler = InMemoryZoneHandler::empty(
            self.origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            proofs,
        );
        for record in self.records.iter().chain(delegations) {
            assert!(
                handler.upsert_mut(record.clone(), 1),
                "cannot add {record} to zone {}",
                self.origin
            );
        }
        if let Some(key) = &self.key {
            handler
                .add_zone_signing_key_mut(key.signer(&self.origin))
                .unwrap_or_else(|e| panic!("zone {}: signing key: {e}", self.origin));
            handler
                .secure_zone_mut()
                .unwrap_or_else(|e| panic!("zone {}: signing: {e}", self.origin));
        }
        for forged in &self.tampered {
            assert!(self.key.is_some(), "tampering needs a signed zone");
            let key = RrKey::new(LowerName::new(&forged.name), forged.record_type());
            let rrset = handler
                .records_get_mut()
                .get_mut(&key)
                .unwrap_or_else(|| panic!("no {} {} to tamper with", forged.name, key.record_type));
            Arc::make_mut(rrset).set_records(vec![forged.clone()]);
        }
        handler
    }

    /// The NS record (and DS, when this zone is signed) its parent publishes for it.
    fn delegation(&self) -> Vec<Record> {
        let ns = name(&format!("ns.{}", self.origin));
        let mut records = vec![Record::from_rdata(
            self.origin.clone(),
            LAB_TTL,
            RData::NS(NS(ns)),
        )];
        if let Some(key) = &self.key {
            records.push(Record::from_rdata(
                self.origin.clone(),
                LAB_TTL,
                key.ds_rdata(&self.origin),
            ));
        }
        records
    }
}

/// The origin of the lab's signed root ([`DnsServer::sign_root`]).
pub const LAB_ROOT: &str = "test.";

/// What the server serves; changed by the test, read by every query.
#[derive(Default)]
struct State {
    zones: Mutex<BTreeMap<LowerName, Zone>>,
    /// The key of the signed lab root `test.`, once [`DnsServer::sign_root`] was called.
    root: Mutex<Option<ZoneKey>>,
    /// Rebuilt from `zones` on every change, swapped whole so that a query never holds a lock
    /// across an await.
    served: RwLock<Arc<Served>>,
    servfail: Mutex<Vec<LowerName>>,
    /// Every query seen, as `name TYPE`, for tests that assert what was (not) looked up.
    queries: Mutex<Vec<String>>,
    /// The queries of `queries` that came over TCP (a resolver retrying a truncated answer).
    tcp_queries: Mutex<Vec<String>>,
}

/// The zones as hickory serves them.
#[derive(Default)]
struct Served {
    /// Every zone: answers all queries but the DS queries below.
    catalog: Catalog,
    /// For the apex of each zone whose parent is a signed lab zone: a catalog without that zone,
    /// so that its DS query reaches the parent, where DS records live (RFC 4035 §3.1.4.1).
    parent_side: HashMap<LowerName, Catalog>,
}

impl State {
    fn rebuild(&self) {
        let mut zones: Vec<Zone> = self.zones.lock().unwrap().values().cloned().collect();
        if let Some(key) = self.root.lock().unwrap().clone() {
            let root = name(LAB_ROOT);
            assert!(
                zones.iter().all(|z| z.origin() != &root),
                "a lab with a signed root cannot also serve a zone {LAB_ROOT} of its own"
            );
            zones.push(Zone::new(LAB_ROOT).signed_with(key));
        }
        // The closest enclosing served zone of each zone, if any.
        let parents: Vec<Option<usize>> = zones
            .iter()
            .map(|child| {
                zones
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.origin() != child.origin() && p.origin().zone_of(child.origin())
                    })
                    .max_by_key(|(_, p)| p.origin().num_labels())
                    .map(|(i, _)| i)
            })
            .collect();
        let handlers: Vec<Arc<dyn ZoneHandler>> = zones
            .iter()
            .enumerate()
            .map(|(i, zone)| {
                // Only a signed parent needs its children's delegations: to prove their DS.
                let delegations: Vec<Record> = match zone.key {
                    Some(_) => zones
                        .iter()
                        .zip(&parents)
                        .filter(|(_, parent)| **parent == Some(i))
                        .flat_map(|(child, _)| child.delegation())
                        .collect(),
                    None => Vec::new(),
                };
                Arc::new(zone.handler(&delegations)) as Arc<dyn ZoneHandler>
            })
            .collect();
        let catalog_without = |skip: Option<usize>| {
            let mut catalog = Catalog::new();
            for (i, (zone, handler)) in zones.iter().zip(&handlers).enumerate() {
                if Some(i) != skip {
                    catalog.upsert(LowerName::new(zone.origin()), vec![handler.clone()]);
                }
            }
            catalog
        };
        let mut served = Served {
            catalog: catalog_without(None),
            parent_side: HashMap::new(),
        };
        for (i, (zone, parent)) in zones.iter().zip(&parents).enumerate() {
            if parent.is_some_and(|p| zones[p].key.is_some()) {
                served
                    .parent_side
                    .insert(LowerName::new(zone.origin()), catalog_without(Some(i)));
            }
        }
        *self.served.write().unwrap() = Arc::new(served);
    }
}

/// hickory's request handler: SERVFAIL for broken domains, else the catalog of zones.
struct LabHandler(Arc<State>);

impl LabHandler {
    async fn handle<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let query = request.request_info().ok().map(|info| info.query.clone());
        if let Some(q) = &query {
            self.0
                .queries
                .lock()
                .unwrap()
                .push(format!("{} {}", q.name(), q.query_type()));
            if request.protocol() == Protocol::Tcp {
                self.0
                    .tcp_queries
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", q.name(), q.query_type()));
            }
            let broken = self
                .0
                .servfail
                .lock()
                .unwrap()
                .iter()
                .any(|d| d.zone_of(q.name()));
            if broken {
                let response = MessageResponseBuilder::new(&request.queries, None)
                    .error_msg(&request.metadata, ResponseCode::ServFail);
                return match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(_) => {
                        let mut metadata = Metadata::response_from_request(&request.metadata);
                        metadata.response_code = ResponseCode::ServFail;
                        ResponseInfo::from(Header {
                            metadata,
                            counts: HeaderCounts::default(),
                        })
                    }
                };
            }
        }
        let served = self.0.served.read().unwrap().clone();
        let parent_side = query
            .as_ref()
            .filter(|q| q.query_type() == RecordType::DS)
            .and_then(|q| served.parent_side.get(q.name()));
        let catalog = parent_side.unwrap_or(&served.catalog);
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        if dnssec_ok {
            catalog
                .handle_request::<_, T>(request, dnssec::PositiveWithoutNsec3(response_handle))
                .await
        } else {
            catalog
                .handle_request::<R, T>(request, response_handle)
                .await
        }
    }
}

// The trait is declared with `#[async_trait]`; this is its expansion, written out so the lab
// needs no extra dependency.
impl RequestHandler for LabHandler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle::<R, T>(request, response_handle))
    }
}

/// A running lab DNS server. Dropping it stops the server.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    _server: Server<LabHandler>,
}

impl DnsServer {
    /// Starts a server on `ip`, UDP and TCP on the same ephemeral port. Needs a Tokio runtime.
    pub async fn start(ip: IpAddr) -> DnsServer {
        let (udp, tcp) = bind_pair(ip).await;
        let addr = udp.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.rebuild();
        let mut server = Server::new(LabHandler(state.clone()));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 65535);
        DnsServer {
            addr,
            state,
            _server: server,
        }
    }

    /// Where the relay's `[dns] nameservers` must point.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a zone, replacing a zone with the same origin.
    pub fn add_zone(&self, zone: Zone) -> &Self {
        self.state
            .zones
            .lock()
            .unwrap()
            .insert(LowerName::new(zone.origin()), zone);
        self.state.rebuild();
        self
    }

    /// Removes a zone: its names become REFUSED (no authority), unless a parent zone is served.
    pub fn remove_zone(&self, origin: &str) -> &Self {
        self.state
            .zones
            .lock()
            .unwrap()
            .remove(&LowerName::new(&name(origin)));
        self.state.rebuild();
        self
    }

    /// From now on the lab serves a signed root zone `test.` (see [`dnssec`]) that delegates to
    /// every lab zone directly below it: with a DS record to a signed zone, without one to an
    /// unsigned zone (provably insecure). Its key, [`DnsServer::trust_anchor`], is then the
    /// validator's only trust anchor. A name under `test.` but under no lab zone becomes a
    /// (secure) NXDOMAIN instead of REFUSED. Calling it again keeps the same key.
    pub fn sign_root(&self) -> &Self {
        self.state
            .root
            .lock()
            .unwrap()
            .get_or_insert_with(ZoneKey::generate);
        self.state.rebuild();
        self
    }

    /// The trust-anchor line of the signed root (`test. IN DNSKEY 257 3 13 …`).
    pub fn trust_anchor(&self) -> String {
        self.root_key().trust_anchor(&name(LAB_ROOT))
    }

    /// The key of the signed root.
    fn root_key(&self) -> ZoneKey {
        self.state
            .root
            .lock()
            .unwrap()
            .clone()
            .expect("the lab root is not signed: call DnsServer::sign_root first")
    }

    /// The signed root's trust anchor as a DS line (`test. IN DS …`).
    pub fn ds_trust_anchor(&self) -> String {
        self.root_key().ds_trust_anchor(&name(LAB_ROOT))
    }

    /// Writes the signed root's trust anchor to a file in `dir`, for `[dns] trust_anchor_file`.
    pub fn write_trust_anchor(&self, dir: &std::path::Path) -> std::path::PathBuf {
        dnssec::write_trust_anchor_file(dir, &[self.trust_anchor()])
    }

    /// From now on, `domain` and every name below it answer SERVFAIL.
    pub fn servfail(&self, domain: &str) -> &Self {
        self.state
            .servfail
            .lock()
            .unwrap()
            .push(LowerName::new(&name(domain)));
        self
    }

    /// Undoes [`DnsServer::servfail`] for `domain`.
    pub fn heal(&self, domain: &str) -> &Self {
        let gone = LowerName::new(&name(domain));
        self.state.servfail.lock().unwrap().retain(|d| *d != gone);
        self
    }

    /// Every query received so far, as `name. TYPE` (e.g. `example.test. MX`).
    pub fn queries(&self) -> Vec<String> {
        self.state.queries.lock().unwrap().clone()
    }

    /// The queries received over TCP so far, in the same form as [`DnsServer::queries`]: a
    /// resolver asks over TCP when a UDP answer came back truncated (RFC 7766 §5).
    pub fn tcp_queries(&self) -> Vec<String> {
        self.state.tcp_queries.lock().unwrap().clone()
    }
}

/// Binds UDP on `ip:0`, then TCP on the same port, retrying when TCP's port is taken.
async fn bind_pair(ip: IpAddr) -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap_or_else(|e| panic!("lab DNS: cannot bind UDP on {ip}: {e}"));
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await {
            return (udp, tcp);
        }
    }
    panic!("lab DNS: no port free for both UDP and TCP on {ip}");
}
