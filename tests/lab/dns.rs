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
//! change for long. DNSSEC signing is not done yet: [`Zone`] keeps the records as plain data so
//! that a signing step can be added when building the zone handler.

use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use hickory_server::Server;
use std::collections::BTreeMap;
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
        }
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

    /// The zone handler hickory serves this zone from.
    fn handler(&self) -> InMemoryZoneHandler<TokioRuntimeProvider> {
        let mut handler = InMemoryZoneHandler::empty(
            self.origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            None,
        );
        for record in &self.records {
            assert!(
                handler.upsert_mut(record.clone(), 1),
                "cannot add {record} to zone {}",
                self.origin
            );
        }
        handler
    }
}

/// What the server serves; changed by the test, read by every query.
#[derive(Default)]
struct State {
    zones: Mutex<BTreeMap<LowerName, Zone>>,
    /// Rebuilt from `zones` on every change, swapped whole so that a query never holds a lock
    /// across an await.
    catalog: RwLock<Arc<Catalog>>,
    servfail: Mutex<Vec<LowerName>>,
    /// Every query seen, as `name TYPE`, for tests that assert what was (not) looked up.
    queries: Mutex<Vec<String>>,
}

impl State {
    fn rebuild(&self) {
        let mut catalog = Catalog::new();
        for zone in self.zones.lock().unwrap().values() {
            let handler: Arc<dyn ZoneHandler> = Arc::new(zone.handler());
            catalog.upsert(LowerName::new(zone.origin()), vec![handler]);
        }
        *self.catalog.write().unwrap() = Arc::new(catalog);
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
        let catalog = self.0.catalog.read().unwrap().clone();
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
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
