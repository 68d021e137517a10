//! The HTTP listener: accepts connections, speaks TLS itself when a certificate is configured
//! (`server.tls_cert`, `server.tls_key`), and keeps any one client from holding the server.
//!
//! - A client gets `server.header_timeout_secs` to send a request's headers, from the moment it
//!   connects or its previous answer was sent (and, with TLS, to finish the handshake); then its
//!   connection is closed, so an idle connection cannot hold a place. HTTP/1.1 only: its one
//!   timer covers every way a connection can sit idle. A client that stops taking an answer
//!   loses its connection after as long: a write that makes no progress for that time fails.
//! - At most `server.max_connections` connections are served at once; one more is answered
//!   `503 Service Unavailable` with `Retry-After` and closed, so that descriptors never run out.
//! - On shutdown, new connections are refused, idle ones closed, and those with a request in
//!   flight get a few seconds to finish.
//!
//! Request timeouts and the cap on event streams are the API's (`api::limits`): they depend on
//! what a request asks for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ServerSettings;

/// Longest in-flight requests may run on after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// The TLS configuration `settings` asks for, read from its PEM files; `None` for plain HTTP.
pub fn tls_config(settings: &ServerSettings) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| anyhow::anyhow!("server.tls_cert: reading {cert}: {err}"))?;
    anyhow::ensure!(!chain.is_empty(), "server.tls_cert: {cert} holds no PEM certificate");
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|err| anyhow::anyhow!("server.tls_key: reading {key}: {err}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("server.tls_cert and server.tls_key do not make a certificate and its key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    settings: &ServerSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let header_timeout = Duration::from_secs(settings.header_timeout_secs);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let tls = tls.map(TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, or a connection reset before it was accepted: the
                    // listener itself is fine.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let service = router.clone().map_request(move |mut request: axum::extract::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let service = TowerToHyperService::new(service);
        let (builder, tls, watcher) = (builder.clone(), tls.clone(), graceful.watcher());
        let stream = WriteDeadline::new(stream, header_timeout);
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => {
                    watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    let Ok(Ok(stream)) = handshake.await else { return };
                    watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {} s after shutdown were dropped", DRAIN.as_secs());
    }
    Ok(())
}

/// A stream whose writes fail once the peer has taken nothing for `limit`: a client that stops
/// reading cannot hold its connection by leaving an answer half sent. Reads pass through.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Running while a write waits for the peer.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> WriteDeadline<S> {
        WriteDeadline { inner, limit, stalled: None }
    }

    /// What became of a write: progress resets the clock; waiting too long fails it.
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        use std::task::Poll;
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing of the answer for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Answers a connection past the limit with `503` and closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the server has as many connections as it serves at once (server.max_connections); retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// The address the listener is bound to, as a URL of the scheme it serves.
pub fn url(address: SocketAddr, tls: bool) -> String {
    format!("{}://{address}", if tls { "https" } else { "http" })
}
