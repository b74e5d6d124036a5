//! The metrics endpoint: `GET /metrics` (the registry, text exposition) and `GET /healthz`
//! (200 `ok` while the relay takes and delivers mail; 503 with the reason while it shuts down,
//! while its scheduler is not running, or while the spool cannot be written: a probe file
//! cannot be written there, or free space is below `queue.min_free`, where new mail is
//! refused). HTTP/1.1 by hyper; anything else is 404, a method other than GET or HEAD 405.
//!
//! Bounded like every listener of ours: at most [`MAX_CONNECTIONS`] at once, request headers
//! within [`HEADER_TIMEOUT`], a connection closed after [`CONNECTION_TIMEOUT`].

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What a scrape and a health check read.
pub struct Scrape {
    pub spool_dir: PathBuf,
    /// Free bytes where a directory is (the SMTP server's own measure, for `queue.min_free`).
    pub free_bytes: fn(&std::path::Path) -> std::io::Result<u64>,
    pub min_free: u64,
    pub policies: Option<Arc<policy_cache::PolicyCache>>,
    /// Set while the scheduler runs.
    pub scheduler_running: Arc<AtomicBool>,
    pub shutdown: watch::Receiver<bool>,
}

impl Scrape {
    /// The gauges read at scrape time, then the exposition.
    async fn metrics(&self) -> String {
        let m = super::get();
        let (dir, free_bytes) = (self.spool_dir.clone(), self.free_bytes);
        if let Ok(Ok(free)) = tokio::task::spawn_blocking(move || free_bytes(&dir)).await {
            m.spool_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        if let Some(p) = &self.policies {
            m.policy_cache_entries
                .set(i64::try_from(p.len()).unwrap_or(i64::MAX));
        }
        m.encode()
    }

    /// `None` when healthy, else why not.
    async fn unhealthy(&self) -> Option<String> {
        if *self.shutdown.borrow() {
            return Some("shutting down".into());
        }
        if !self.scheduler_running.load(Ordering::Relaxed) {
            return Some("the delivery scheduler is not running".into());
        }
        let (dir, min_free, free_bytes) = (self.spool_dir.clone(), self.min_free, self.free_bytes);
        match tokio::task::spawn_blocking(move || spool_writable(&dir, min_free, free_bytes)).await
        {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(e) => Some(format!("spool check failed: {e}")),
        }
    }
}

/// Writes and removes a probe file in the spool, and compares free space with `min_free`.
fn spool_writable(
    dir: &std::path::Path,
    min_free: u64,
    free_bytes: fn(&std::path::Path) -> std::io::Result<u64>,
) -> Result<(), String> {
    use std::io::Write;
    let probe = dir.join(format!(".healthz.{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|mut f| f.write_all(b"ok\n"));
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| format!("the spool {} is not writable: {e}", dir.display()))?;
    match free_bytes(dir) {
        Ok(free) if free < min_free => Err(format!(
            "the spool has {free} bytes free, below queue.min_free ({min_free}): new mail is refused"
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot tell the spool's free space: {e}")),
    }
}

/// Serves until `shutdown`; health checks answer 503 from the moment it turns.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = scrape.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: the connection is closed at once, unanswered.
            continue;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let scrape = scrape.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&scrape, req).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn answer(scrape: &Scrape, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, scrape.metrics().await);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => match scrape.unhealthy().await {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
