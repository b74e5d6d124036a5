//! MTA-STS policy look-ups per second on one core: what `PolicyCache::lookup` costs delivery.
//!
//! Run it (release build, no Internet needed):
//!
//! ```text
//! cargo bench --bench policy_lookup
//! cargo bench --bench policy_lookup -- --seconds 5 --domains 100 --concurrency 32
//! ```
//!
//! Two cases, each for `--seconds` (default 3) after a warm-up, with `--concurrency` look-ups
//! in flight (default 32) over `--domains` domains (default 100) taken in turn:
//! - **cached**: the domain has a cached, unexpired policy and its `_mta-sts` TXT record still
//!   carries the same `id` (RFC 8461 §5.1: nothing to fetch);
//! - **no policy**: the domain publishes no `_mta-sts` TXT record (NXDOMAIN).
//!
//! The cache is opened exactly as the daemon opens it (`mxguard::control::open_cache`, the
//! production resolver and fetcher) and runs on a current-thread Tokio runtime on this thread:
//! one core. The lab's DNS server and HTTPS policy host (tests/lab/) run on a second runtime
//! thread, as a name server would run elsewhere. Lab records have a 1-second TTL, so about once
//! a second per domain the resolver really asks the DNS server again; real TTLs are longer.
//!
//! A third line, the resolver's own TXT look-up with the same options, is the floor under both
//! cases: the part of a look-up that is hickory's and not the cache's. Delivery's resolver
//! caches `[dns] cache_size` responses (32768 by default); with more domains than that in turn, every
//! look-up becomes a DNS round trip, which `--domains 2000` shows (and `--floor-cache 8192`
//! shows the floor with a larger cache).
//!
//! The reference: postfix-mta-sts-resolver does about 44,000 cached and 8,500 no-policy
//! look-ups per second on one core of these machines; the target is five times both.

#[path = "../tests/lab/mod.rs"]
// `cargo check` builds the lab's unit-test modules here without their tests.
#[allow(unused_imports)]
mod lab;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::TokioResolver;
use lab::dns::Zone;
use lab::https::PolicyServer;
use lab::Lab;
use policy_cache::{PolicyCache, StsLookup};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// postfix-mta-sts-resolver on one core of these machines, look-ups per second.
const REFERENCE_CACHED: f64 = 44_000.0;
const REFERENCE_NO_POLICY: f64 = 8_500.0;
/// The goal: this many times the reference.
const TARGET_FACTOR: f64 = 5.0;

const POLICY: &str =
    "version: STSv1\nmode: enforce\nmx: mx.bench.test\nmx: *.bench.test\nmax_age: 604800\n";

struct Options {
    seconds: f64,
    domains: usize,
    concurrency: usize,
    /// Responses the floor's resolver caches (delivery's keeps `[dns] cache_size`).
    floor_cache: u64,
}

impl Options {
    /// `--seconds N --domains N --concurrency N --floor-cache N`; anything else (cargo passes `--bench`) is
    /// ignored.
    fn from_args() -> Result<Options, String> {
        let mut o = Options {
            seconds: 3.0,
            domains: 100,
            concurrency: 32,
            floor_cache: 32_768,
        };
        // `cargo bench` passes `--bench`; without it this is `cargo test` building every target:
        // a short smoke run that proves the benchmark works, without taking the suite's time.
        if !std::env::args().any(|a| a == "--bench") {
            o.seconds = 0.2;
            o.domains = 4;
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--seconds" => o.seconds = parse(&value("--seconds")?)?,
                "--domains" => o.domains = parse(&value("--domains")?)?,
                "--concurrency" => o.concurrency = parse(&value("--concurrency")?)?,
                "--floor-cache" => o.floor_cache = parse(&value("--floor-cache")?)?,
                _ => {}
            }
        }
        if o.seconds <= 0.0 || o.domains == 0 || o.concurrency == 0 {
            return Err("--seconds, --domains and --concurrency must be positive".into());
        }
        Ok(o)
    }
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("bad number {text:?}"))
}

/// The lab for the benchmark: `cached-N.test` announce and serve a policy; `plain-N.test`
/// have MX records and no `_mta-sts` record.
struct Bench {
    lab: Lab,
    server: PolicyServer,
    cached: Vec<String>,
    plain: Vec<String>,
}

async fn build_lab(domains: usize) -> Bench {
    let lab = Lab::new().await;
    let server = PolicyServer::start(&lab, 80).await;
    let mut cached = Vec::new();
    let mut plain = Vec::new();
    for i in 0..domains {
        let domain = format!("cached-{i}.test");
        server.publish(&lab.ca, &domain, POLICY);
        let mx = format!("mx.{domain}");
        lab.zone(server.announce(
            Zone::new(&domain).mx(10, &mx).a(&mx, lab.ip(3)),
            &domain,
            "20261123",
        ));
        cached.push(domain);
        let domain = format!("plain-{i}.test");
        let mx = format!("mx.{domain}");
        lab.zone(Zone::new(&domain).mx(10, &mx).a(&mx, lab.ip(3)));
        plain.push(domain);
    }
    Bench {
        lab,
        server,
        cached,
        plain,
    }
}

/// What a case must return for every look-up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Policy,
    NoPolicy,
}

fn kind(lookup: &StsLookup) -> Expect {
    match lookup {
        StsLookup::Policy(_) => Expect::Policy,
        _ => Expect::NoPolicy,
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_THREAD is Linux's.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// One measurement: look-ups done, wall time, this thread's CPU time.
struct Measured {
    count: u64,
    wrong: u64,
    first_wrong: Option<String>,
    wall: Duration,
    cpu: Duration,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64()
    }
}

/// Runs `op` over `domains` in turn, `concurrency` at a time, for `seconds`.
async fn measure<F, Fut>(domains: &[String], options: &Options, op: F) -> Measured
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let next = Cell::new(0usize);
    let count = Cell::new(0u64);
    let wrong = Cell::new(0u64);
    let first_wrong = std::cell::RefCell::new(None);
    let deadline = Instant::now() + Duration::from_secs_f64(options.seconds);
    let (start, cpu_start) = (Instant::now(), thread_cpu());
    let workers = (0..options.concurrency).map(|_| async {
        while Instant::now() < deadline {
            let i = next.get();
            next.set(i + 1);
            let domain = domains[i % domains.len()].clone();
            if let Err(e) = op(domain).await {
                wrong.set(wrong.get() + 1);
                first_wrong.borrow_mut().get_or_insert(e);
            }
            count.set(count.get() + 1);
        }
    });
    futures::future::join_all(workers).await;
    Measured {
        count: count.get(),
        wrong: wrong.get(),
        first_wrong: first_wrong.into_inner(),
        wall: start.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu_start),
    }
}

async fn case(cache: &PolicyCache, domains: &[String], expect: Expect, o: &Options) -> Measured {
    // Warm-up: the first look-up of a cached domain fetches its policy over HTTPS.
    for d in domains {
        let got = cache.lookup(d).await;
        if kind(&got) != expect {
            eprintln!("warm-up: {d}: expected {expect:?}, got {got:?}");
        }
    }
    measure(domains, o, |d| async move {
        let got = cache.lookup(&d).await;
        if kind(&got) == expect {
            Ok(())
        } else {
            Err(format!("{d}: expected {expect:?}, got {got:?}"))
        }
    })
    .await
}

/// The resolver as delivery builds it (`[dns]` with one name server), for the floor.
fn plain_resolver(ns: SocketAddr, cache_size: u64) -> Result<TokioResolver, String> {
    let mut udp = ConnectionConfig::udp();
    udp.port = ns.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = ns.port();
    let server = NameServerConfig::new(ns.ip(), true, vec![udp, tcp]);
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![server]),
        TokioRuntimeProvider::default(),
    );
    let opts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.cache_size = cache_size;
    builder.build().map_err(|e| e.to_string())
}

fn report(label: &str, m: &Measured, reference: Option<f64>) {
    let rate = m.per_second();
    let cpu_share = m.cpu.as_secs_f64() / m.wall.as_secs_f64();
    let per_cpu = m.count as f64 / m.cpu.as_secs_f64().max(1e-9);
    let mut line = format!(
        "{label}: {rate:.0} look-ups/s ({} in {:.2} s; this thread busy {:.0}%, {:.2} µs CPU per look-up)",
        m.count,
        m.wall.as_secs_f64(),
        cpu_share * 100.0,
        1e6 / per_cpu
    );
    if let Some(reference) = reference {
        let target = reference * TARGET_FACTOR;
        line.push_str(&format!(
            "; {:.1}× postfix-mta-sts-resolver ({reference:.0}/s), target {target:.0}/s: {}",
            rate / reference,
            if rate >= target { "met" } else { "NOT met" }
        ));
    }
    println!("{line}");
    if m.wrong > 0 {
        println!(
            "  {label}: {} look-ups gave the wrong answer, e.g. {}",
            m.wrong,
            m.first_wrong.as_deref().unwrap_or("?")
        );
    }
}

fn main() -> Result<(), String> {
    let options = Options::from_args()?;
    mxguard::tls::install_crypto_provider();
    let lab_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lab")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let bench = lab_runtime.block_on(build_lab(options.domains));
    let config = bench
        .lab
        .relay_config()
        .toml(&format!(
            "[mta_sts]\nhttps_port = {}\n",
            bench.server.port()
        ))
        .render();
    let config = mxguard::config::Config::from_toml(&config).map_err(|e| e.to_string())?;
    let dns = bench.lab.dns.addr();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let cache = mxguard::control::open_cache(&config).map_err(|e| e.to_string())?;
        println!(
            "policy look-ups on one core: {} domains per case, {} in flight, {} s each",
            options.domains, options.concurrency, options.seconds
        );
        let cached = case(&cache, &bench.cached, Expect::Policy, &options).await;
        report("cached", &cached, Some(REFERENCE_CACHED));
        let fetches: usize = bench
            .cached
            .iter()
            .map(|d| bench.server.requests(&format!("mta-sts.{d}")))
            .sum();
        println!("  policy fetches during both warm-up and run: {fetches}");
        let plain = case(&cache, &bench.plain, Expect::NoPolicy, &options).await;
        report("no policy", &plain, Some(REFERENCE_NO_POLICY));

        let resolver = plain_resolver(dns, options.floor_cache)?;
        let floor = measure(&bench.cached, &options, |d| {
            let resolver = &resolver;
            async move {
                let name = Name::from_ascii(format!("_mta-sts.{d}.")).map_err(|e| e.to_string())?;
                resolver
                    .lookup(name, RecordType::TXT)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        report("resolver TXT alone (floor)", &floor, None);
        Ok::<_, String>(())
    })?;
    let _guard = lab_runtime.enter();
    drop(bench);
    Ok(())
}
