//! Serving the router over HTTP/1.1 with the bounds an internet-facing server needs: a cap
//! on connections (beyond it a few more are read, for the probes only; more are closed at
//! once), the header and keep-alive timeout, a write timeout (a client that stops reading
//! is dropped and its requests aborted), and accept errors (out of descriptors) that neither
//! spin nor flood the log. Accepting goes on while the server drains, so new requests get a
//! 503 instead of a refused connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

/// The connection limits and timeouts (`--max-connections`, `--*-timeout`).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Connections read beyond the cap, each for one probe (then closed); more are closed at once.
pub const OVERFLOW_CONNECTIONS: usize = 32;

/// Header timeout of an overflow connection: a probe sends its request at once.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Descriptors kept free of connections (the model file, logs, the engine's own).
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the open-file limit to its hard limit, and returns `max_connections` lowered so
/// that connections (with the overflow ones) never take the last descriptors.
pub fn fit_connections_to_descriptors(max_connections: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only the struct passed.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let room = soft.saturating_sub(RESERVED_DESCRIPTORS + OVERFLOW_CONNECTIONS as u64);
    let fitted = max_connections.min(room.max(1) as usize);
    if fitted < max_connections {
        tracing::warn!(
            "--max-connections {max_connections} lowered to {fitted} to fit the open-file limit of {soft}"
        );
    }
    fitted
}

/// Accepts and serves connections until the process ends: `app` within the cap, `probes`
/// (which answers /health and /ping, 503 otherwise) on the overflow connections.
pub async fn serve_http(listener: TcpListener, app: Router, probes: Router, limits: HttpLimits) {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read_timeout,
    ));
    let within = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let mut last_warning: Option<Instant> = None;
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors (or a connection reset before accept): wait a little
                // rather than spin, and say so once a minute at most.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!("accept error: {e}");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (permit, service, header_timeout, keep_alive) = match within.clone().try_acquire_owned()
        {
            Ok(p) => (p, app.clone(), limits.header_read_timeout, true),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(p) => (
                    p,
                    probes.clone(),
                    limits.header_read_timeout.min(OVERFLOW_HEADER_TIMEOUT),
                    false,
                ),
                Err(_) => continue, // dropped: closed at once
            },
        };
        let io = TokioIo::new(WriteTimeout::new(tcp, limits.write_timeout));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(keep_alive);
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http.serve_connection(io, TowerToHyperService::new(service));
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// A TCP stream whose writes fail once one has waited `timeout` for the client to read.
struct WriteTimeout {
    io: TcpStream,
    timeout: Duration,
    /// Running while a write waits.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteTimeout {
    fn new(io: TcpStream, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
        }
    }

    /// After the stream said Pending: Pending until `timeout` has passed, then an error.
    fn wait<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn done<T>(&mut self, r: io::Result<T>) -> Poll<io::Result<T>> {
        self.stalled = None;
        Poll::Ready(r)
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => this.done(r),
            Poll::Pending => this.wait(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => this.done(r),
            Poll::Pending => this.wait(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(r) => this.done(r),
            Poll::Pending => this.wait(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
