//! The metrics endpoint's HTTP: hyper's HTTP/1.1 server (keep-alive, HEAD, 405 with `Allow`,
//! gzip when asked), with the bounds a hostile or careless client makes necessary:
//! - a request's header must arrive within `HEADER_TIMEOUT`, and a connection lives at most
//!   `CONNECTION_LIFETIME`;
//! - at most `MAX_CONNECTIONS` are open: past that, the oldest one left idle is closed to make
//!   room (one that sent no request within `GRACE` of connecting, or none within `ANSWERED`
//!   of its last answer), so that idle or half-sent connections can never keep a scrape out,
//!   while a burst of real scrapes (which send at once) waits its turn;
//! - an accept that fails (out of file descriptors) closes such a connection and waits a
//!   moment, rather than retrying at once in a loop that takes a whole core;
//! - one gather of the metrics at a time: scrapes that arrive while one runs wait for it and
//!   are answered with its result (`Scrapes`), so parallel scrapes cost one body, not one each.
//!
//! With `--web.config.file` (`web_config`): TLS, whose handshake must end within
//! `HEADER_TIMEOUT` as a header must; basic auth on every path (`basic_auth`), where a
//! connection waiting its turn for a password check, or refused, can be closed to make room;
//! and the file's headers on every response.
use std::{
    collections::VecDeque,
    convert::Infallible,
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, TextEncoder};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Mutex,
    task::AbortHandle,
};
use tokio_rustls::TlsAcceptor;

use crate::{metrics::Metrics, web_config::WebConfig};

/// Time a client has to send a request's header (also between keep-alive requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's whole life, keep-alive included: Prometheus reconnects after it.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Connections open at once.
const MAX_CONNECTIONS: usize = 64;
/// Wait after a failed accept, or while no connection can be closed.
const BACKOFF: Duration = Duration::from_millis(20);
/// How long a new connection may take to send its request before it can be closed to make
/// room: a client that means to scrape sends at once.
const GRACE: Duration = Duration::from_millis(250);
/// How long after its last answer a connection cannot be closed to make room: time to flush a
/// large body to its client, which hyper does after the answer is made.
const ANSWERED: Duration = Duration::from_secs(5);

/// Serves the endpoint until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, web: WebConfig) {
    let scrapes = Arc::new(Scrapes::new(metrics));
    let tls = web.tls.clone().map(TlsAcceptor::from);
    let web = Arc::new(web);
    let mut open: VecDeque<Connection> = VecDeque::new();
    loop {
        make_room(&mut open).await;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // EMFILE and the like: free a descriptor, and do not spin.
                evict_one(&mut open);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let kept = Arc::new(KeptUntil::from(GRACE));
        let (scrapes, web, tls, flag) = (scrapes.clone(), web.clone(), tls.clone(), kept.clone());
        let task = tokio::spawn(async move {
            let served = async move {
                match tls {
                    None => connection(stream, scrapes, web, flag).await,
                    // A client that connects and never finishes its handshake is closed as one
                    // that never finishes its header is.
                    Some(tls) => {
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await
                        {
                            connection(stream, scrapes, web, flag).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
        });
        open.push_back(Connection {
            task: task.abort_handle(),
            kept,
        });
    }
}

/// HTTP/1.1 on a connection, plain or TLS, until it ends.
async fn connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    scrapes: Arc<Scrapes>,
    web: Arc<WebConfig>,
    kept: Arc<KeptUntil>,
) {
    let service = service_fn(move |req| {
        let (scrapes, web, kept) = (scrapes.clone(), web.clone(), kept.clone());
        async move { Ok::<_, Infallible>(respond(&scrapes, &web, req, kept).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// An open connection: its task, and until when it may not be closed to make room.
struct Connection {
    task: AbortHandle,
    kept: Arc<KeptUntil>,
}

/// A moment, as milliseconds since observer's start, shared with the connection's task.
struct KeptUntil(AtomicU64);

impl KeptUntil {
    fn from(after: Duration) -> KeptUntil {
        KeptUntil(AtomicU64::new(millis() + after.as_millis() as u64))
    }

    fn extend(&self, by: Duration) {
        self.0
            .fetch_max(millis() + by.as_millis() as u64, Ordering::Relaxed);
    }

    fn passed(&self) -> bool {
        millis() >= self.0.load(Ordering::Relaxed)
    }
}

fn millis() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Waits until a new connection fits: closes the oldest one that may be closed, or waits for
/// one to finish or to outlive its grace.
async fn make_room(open: &mut VecDeque<Connection>) {
    loop {
        open.retain(|c| !c.task.is_finished());
        if open.len() < MAX_CONNECTIONS || evict_one(open) {
            return;
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// Closes the oldest connection left idle; false if there is none.
fn evict_one(open: &mut VecDeque<Connection>) -> bool {
    match open.iter().position(|c| c.kept.passed()) {
        Some(i) => {
            if let Some(c) = open.remove(i) {
                c.task.abort();
            }
            true
        }
        None => false,
    }
}

async fn respond(
    scrapes: &Scrapes,
    web: &WebConfig,
    req: Request<Incoming>,
    kept: Arc<KeptUntil>,
) -> Response<Full<Bytes>> {
    // A connection is not kept while it waits for its turn at a password check, nor once
    // refused (but for the time to send the 401): it can be closed to make room for one that
    // scrapes. It is kept while its check runs, so that the check's work is not thrown away.
    let allowed = match &web.auth {
        Some(auth) => {
            let allowed = auth
                .allows(req.headers(), || kept.extend(Duration::from_secs(3600)))
                .await;
            if !allowed {
                kept.0.store(0, Ordering::Relaxed);
                kept.extend(GRACE);
            }
            allowed
        }
        None => true,
    };
    let mut response = if allowed {
        // Kept while the answer is made (a gather can take seconds) and written after.
        kept.extend(Duration::from_secs(3600));
        let response = answer(scrapes, &req).await;
        kept.0.store(0, Ordering::Relaxed);
        kept.extend(ANSWERED);
        response
    } else {
        unauthorized()
    };
    response.headers_mut().extend(web.headers.clone());
    response
}

/// 401, asking for basic auth, as the exporter-toolkit answers.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"Unauthorized\n")));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    let h = r.headers_mut();
    h.insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic"),
    );
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer(scrapes: &Scrapes, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let asked = Instant::now();
    let path = req.uri().path();
    let (status, ctype, encoding, body) = match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let gzip = accepts_gzip(req);
            match scrapes.body(asked, gzip).await {
                Ok(body) => (
                    StatusCode::OK,
                    TextEncoder::new().format_type().to_string(),
                    gzip.then_some("gzip"),
                    body,
                ),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8".into(),
                    None,
                    Bytes::from(format!("observer: {e:#}\n")),
                ),
            }
        }
        (&Method::GET | &Method::HEAD, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8".into(),
            None,
            Bytes::from_static(b"observer: metrics at /metrics\n"),
        ),
        (_, "/metrics" | "/") => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"GET or HEAD\n")));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8".into(),
            None,
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&ctype) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(e) = encoding {
        h.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static(e),
        );
    }
    h.insert(
        header::VARY,
        header::HeaderValue::from_static("Accept-Encoding"),
    );
    r
}

fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// One gather at a time, shared with the scrapes that waited for it.
struct Scrapes {
    metrics: Arc<Metrics>,
    last: Mutex<Option<Gathered>>,
}

struct Gathered {
    /// When the gather finished: it answers every scrape that arrived before.
    done: Instant,
    text: Bytes,
    gzip: Option<Bytes>,
}

impl Scrapes {
    fn new(metrics: Arc<Metrics>) -> Scrapes {
        Scrapes {
            metrics,
            last: Mutex::new(None),
        }
    }

    /// The metrics for a scrape that arrived at `asked`: a gather that finished after that is
    /// as fresh as one of its own.
    async fn body(&self, asked: Instant, gzip: bool) -> Result<Bytes> {
        let mut last = self.last.lock().await;
        let fresh = last.as_ref().is_some_and(|g| g.done >= asked);
        if !fresh {
            // Let the last body go first: held while the next is written, the two would double
            // the peak (2 x 16 MB for 4096 ports). Scrapes it already answers hold their copy.
            *last = None;
            let metrics = self.metrics.clone();
            let text = tokio::task::spawn_blocking(move || {
                let text = metrics.render();
                // What the render took besides its body is freed by now: give the heap back.
                // SAFETY: no preconditions.
                unsafe { libc::malloc_trim(0) };
                text
            })
            .await
            .context("gathering the metrics")?
            .context("encoding the metrics")?;
            *last = Some(Gathered {
                done: Instant::now(),
                text: Bytes::from(text),
                gzip: None,
            });
        }
        let g = last.as_mut().expect("gathered above");
        if !gzip {
            return Ok(g.text.clone());
        }
        if g.gzip.is_none() {
            let text = g.text.clone();
            let packed = tokio::task::spawn_blocking(move || {
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&text).and_then(|_| z.finish())
            })
            .await
            .context("compressing the metrics")?
            .context("compressing the metrics")?;
            g.gzip = Some(Bytes::from(packed));
        }
        Ok(g.gzip.clone().expect("compressed above"))
    }
}
