//! `mxguard serve`: opens the spool, starts the listeners and the delivery scheduler, and
//! shuts them down in order: stop accepting, let sessions finish, let deliveries finish.

use crate::config::Config;
use crate::delivery::Deliverer;
use crate::inbound::Inbound;
use crate::queue::{Queue, Scheduler};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("data_dir {0} is in use by another mxguard process")]
    Locked(String),
    #[error("listener[{index}].address {address}: {source}")]
    Bind {
        index: usize,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Runs the relay until `shutdown` turns true.
pub async fn run(config: Arc<Config>, shutdown: watch::Receiver<bool>) -> Result<(), ServerError> {
    crate::tls::install_crypto_provider();
    if !config.hostname.contains('.') {
        // Many MX hosts refuse an EHLO name that is not fully qualified, and mail-loop
        // detection compares MX greetings against this name.
        tracing::warn!(
            "hostname {:?} is not fully qualified; set `hostname` in the configuration",
            config.hostname
        );
    }
    let _lock = lock_data_dir(&config.data_dir)?;
    // Before any listener exists, so that a SIGHUP never finds its default (terminate).
    let hangup = hangup_signal();
    let queue = Queue::open(&config.spool_dir()).map_err(|source| ServerError::DataDir {
        path: config.spool_dir().display().to_string(),
        source,
    })?;
    let policies = open_policy_cache(&config)?;
    if let Some(p) = &policies {
        p.observe_fetches(Arc::new(crate::metrics::policy_fetch));
    }
    let mut deliverer = Deliverer::new(config.clone(), policies.clone())
        .map_err(|e| ServerError::Setup(e.to_string()))?;
    // TLS-RPT (RFC 8460): every session's outcome is counted while reporting is on.
    let tls_counts = config.tlsrpt.enabled.then(|| {
        Arc::new(crate::report::counts::Counter::open(
            &config.data_dir.join("tlsrpt"),
            config.tlsrpt.interval,
        ))
    });
    if let Some(counter) = &tls_counts {
        deliverer = deliverer.with_tls_reports(counter.clone());
    }
    let reporter = match &tls_counts {
        Some(counter) => Some(start_reporter(&config, counter.clone(), queue.clone())?),
        None => None,
    };
    let compliance = crate::compliance::Log::open(&config.compliance)
        .map_err(|e| {
            let file = config.compliance.file.as_deref().unwrap_or(Path::new("-"));
            ServerError::Setup(format!("compliance.file {}: {e}", file.display()))
        })?
        .map(Arc::new);
    let observers = crate::queue::Observers {
        compliance: compliance.clone(),
    };
    let inbound = Arc::new(
        Inbound::new(config.clone(), queue.clone())
            .map_err(|e| ServerError::Setup(e.to_string()))?,
    );
    // Bound before the SMTP listeners, so that a relay that accepts mail also answers
    // `mxguard policy …`.
    let control =
        crate::control::ControlListener::bind(&crate::control::socket_path(&config.data_dir))
            .map_err(|e| ServerError::Setup(e.to_string()))?;
    let scheduler_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics = match config.metrics.listen {
        Some(address) => {
            Some(bind_metrics(address, &config, &policies, &scheduler_running, &shutdown).await?)
        }
        None => None,
    };
    let mut sockets = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let socket = TcpListener::bind(l.address)
            .await
            .map_err(|source| ServerError::Bind {
                index,
                address: l.address,
                source,
            })?;
        let local = socket.local_addr().unwrap_or(l.address);
        let mode = match (l.implicit_tls, l.tls_cert.is_some()) {
            (true, _) => "implicit TLS",
            (false, true) => "STARTTLS",
            (false, false) => "plaintext",
        };
        tracing::info!("listening on {local} ({mode})");
        sockets.push((socket, index));
    }
    // `[policy_service]`: the socketmap for Postfix, on the daemon's own cache and tables.
    let policy_service = crate::policy_service::PolicyService::bind(
        &config,
        policies.clone(),
        deliverer.tls_policies(),
    )
    .await
    .map_err(|e| ServerError::Setup(e.to_string()))?
    .map(|service| tokio::spawn(service.serve(shutdown.clone())));
    tokio::spawn(watch_reloads(
        deliverer.tls_policies(),
        compliance.clone(),
        hangup,
        shutdown.clone(),
    ));
    let control = tokio::spawn(
        control.serve(
            policies.clone(),
            Some(queue.clone()),
            reporter
                .clone()
                .map(|r| r as Arc<dyn crate::control::TlsRptService>),
            shutdown.clone(),
        ),
    );
    let refresher = policies.map(|p| tokio::spawn(p.run_refresher(shutdown.clone())));
    let reporting = reporter
        .clone()
        .map(|r| tokio::spawn(r.run(shutdown.clone())));
    let counts_flusher = tls_counts
        .clone()
        .map(|c| tokio::spawn(flush_counts(c, shutdown.clone())));
    let scheduler = Scheduler::new(queue, deliverer, config.clone()).with_observers(observers);
    let running = scheduler_running.clone();
    let scheduler_shutdown = shutdown.clone();
    let scheduler = tokio::spawn(async move {
        running.store(true, std::sync::atomic::Ordering::Relaxed);
        scheduler.run(scheduler_shutdown).await;
        running.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    tracing::info!(
        "mxguard started: hostname {}, data_dir {}",
        config.hostname,
        config.data_dir.display()
    );
    inbound.serve(sockets, shutdown).await;
    if let Err(e) = scheduler.await {
        tracing::error!("scheduler: {e}");
    }
    if let Some(Err(e)) = futures::future::OptionFuture::from(reporting).await {
        tracing::error!("TLS-RPT reporter: {e}");
    }
    if let Some(counter) = &tls_counts {
        counter.flush();
    }
    if let Some(reporter) = &reporter {
        // In a fleet, what this node counted goes to Redis before it stops.
        reporter.share_counts().await;
    }
    if let Some(log) = &compliance {
        // Blocks until the writer has written what the deliveries recorded.
        let log = log.clone();
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
    }
    if let Err(e) = control.await {
        tracing::error!("control socket: {e}");
    }
    if let Some(Err(e)) = futures::future::OptionFuture::from(refresher).await {
        tracing::error!("MTA-STS policy refresher: {e}");
    }
    if let Some(Err(e)) = futures::future::OptionFuture::from(counts_flusher).await {
        tracing::error!("TLS-RPT counts: {e}");
    }
    if let Some(Err(e)) = futures::future::OptionFuture::from(metrics).await {
        tracing::error!("metrics: {e}");
    }
    if let Some(Err(e)) = futures::future::OptionFuture::from(policy_service).await {
        tracing::error!("policy service: {e}");
    }
    tracing::info!("mxguard stopped");
    Ok(())
}

/// The control socket's `tlsrpt` commands, answered by the reporter.
impl crate::control::TlsRptService for crate::report::send::Reporter {
    fn show<'a>(
        &'a self,
        domain: Option<&'a str>,
        json: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + 'a>> {
        Box::pin(crate::report::send::Reporter::show(self, domain, json))
    }

    fn send_now<'a>(
        &'a self,
        domain: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + 'a>> {
        Box::pin(crate::report::send::Reporter::send_now(self, domain))
    }
}

/// Binds `[metrics] listen` and serves `/metrics` and `/healthz` there until shutdown.
async fn bind_metrics(
    address: std::net::SocketAddr,
    config: &Config,
    policies: &Option<Arc<policy_cache::PolicyCache>>,
    scheduler_running: &Arc<std::sync::atomic::AtomicBool>,
    shutdown: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let socket = TcpListener::bind(address)
        .await
        .map_err(|e| ServerError::Setup(format!("metrics.listen {address}: {e}")))?;
    tracing::info!(
        "metrics on http://{}/metrics",
        socket.local_addr().unwrap_or(address)
    );
    let scrape = Arc::new(crate::metrics::http::Scrape {
        spool_dir: config.spool_dir(),
        free_bytes: crate::inbound::free_bytes,
        min_free: config.queue.min_free,
        policies: policies.clone(),
        scheduler_running: scheduler_running.clone(),
        shutdown: shutdown.clone(),
    });
    Ok(tokio::spawn(crate::metrics::http::serve(socket, scrape)))
}

/// The TLS-RPT sender: report mail goes into `queue` like any message.
fn start_reporter(
    config: &Arc<Config>,
    counter: Arc<crate::report::counts::Counter>,
    queue: Queue,
) -> Result<Arc<crate::report::send::Reporter>, ServerError> {
    let resolver = crate::delivery::dns::build_resolver(&config.dns)
        .map_err(|e| ServerError::Setup(format!("tlsrpt: DNS resolver: {e}")))?;
    let enqueue: crate::report::send::Enqueue = Arc::new(move |envelope, message| {
        let queue = queue.clone();
        Box::pin(async move {
            queue
                .enqueue(envelope, message)
                .await
                .map(|id| id.to_string())
                .map_err(|reply| reply.to_string())
        })
    });
    let reporter = crate::report::send::Reporter::new(config.clone(), counter, resolver, enqueue)
        .map_err(|e| ServerError::Setup(format!("tlsrpt: {e}")))?;
    Ok(Arc::new(reporter))
}

/// Writes the TLS-RPT counts to their database every few seconds, and once more after the
/// scheduler has stopped: a crash loses at most the last few seconds of counts.
async fn flush_counts(
    counter: Arc<crate::report::counts::Counter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => counter.flush(),
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    // Deliveries still finishing after the signal are counted by the final flush, which
    // runs when the scheduler is done (see `run`).
}

/// Rereads the TLS policy tables when their files change (checked every two seconds) and on
/// SIGHUP, until shutdown: an operator adds a forced-encryption sender without a restart.
/// SIGHUP also reopens the compliance record (log rotation).
async fn watch_reloads(
    tables: Arc<crate::tls_policy::TlsPolicies>,
    compliance: Option<Arc<crate::compliance::Log>>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let sighup = async {
            match &mut hangup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => tables.reload_if_changed(),
            _ = sighup => {
                tracing::info!("SIGHUP: rereading the TLS policy tables");
                tables.reload();
                if let Some(log) = &compliance {
                    log.reopen();
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The SIGHUP stream; `None` (with a warning) when it cannot be had.
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("SIGHUP handler: {e}; TLS policy tables reload on change only");
            None
        }
    }
}

/// The MTA-STS policy cache under `data_dir`, when `mta_sts.enabled`; opened as the command
/// line opens it when no daemon runs.
fn open_policy_cache(
    config: &Config,
) -> Result<Option<Arc<policy_cache::PolicyCache>>, ServerError> {
    if !config.mta_sts.enabled {
        return Ok(None);
    }
    let cache =
        crate::control::open_cache(config).map_err(|e| ServerError::Setup(e.to_string()))?;
    Ok(Some(Arc::new(cache)))
}

/// One daemon per data directory: two schedulers on one spool would deliver everything twice.
/// The command line takes the same lock to change the queue when no daemon runs.
pub fn lock_data_dir(dir: &Path) -> Result<File, ServerError> {
    let err = |source| ServerError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = File::create(dir.join("mxguard.lock")).map_err(err)?;
    // SAFETY: flock on a valid, open descriptor; the lock lives as long as `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ServerError::Locked(dir.display().to_string()));
    }
    Ok(file)
}
