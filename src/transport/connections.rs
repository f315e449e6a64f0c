//! Accepts connections for the gRPC server: closes those over `xds.max_connections`, and with
//! TLS configured runs the handshake and the client-identity check before gRPC sees them.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::tls::TlsReloader;
use crate::telemetry::Metrics;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The transport under one gRPC connection.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a request knows of its connection (tonic puts it in the request's extensions).
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: Option<std::net::SocketAddr>,
    /// URI and `dns:` SANs of the client certificate (empty without mutual TLS).
    pub identities: Arc<Vec<String>>,
}

/// A connection that counts itself open until dropped.
#[derive(Debug)]
pub struct CountedStream {
    inner: Transport,
    peer: PeerInfo,
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

/// Runs `$call` on whichever transport is inside.
macro_rules! delegate {
    ($self:expr, $stream:ident => $call:expr) => {
        match &mut $self.get_mut().inner {
            Transport::Plain($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            Transport::Tls($stream) => {
                let $stream = Pin::new($stream.as_mut());
                $call
            }
        }
    };
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.dec();
    }
}

impl Connected for CountedStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, stream => stream.poll_read(context, buf))
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, stream => stream.poll_write(context, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, stream => stream.poll_flush(context))
    }
    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, stream => stream.poll_shutdown(context))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, stream => stream.poll_write_vectored(context, buffers))
    }
    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped; connections past `max_open`
/// are closed at once, and with `tls` the handshake and identity check run before gRPC; every
/// refusal is counted.
pub fn accept_limited(
    listener: TcpListener,
    max_open: usize,
    tls: Option<TlsReloader>,
    metrics: Metrics,
) -> ReceiverStream<io::Result<CountedStream>> {
    let (sender, receiver) = mpsc::channel(64);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = sender.closed() => return,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open.load(Ordering::Relaxed) >= max_open {
                metrics.refuse("max_connections");
                tracing::warn!(%peer, max_open, "connection refused: xds.max_connections reached");
                continue;
            }
            let _ = socket.set_nodelay(true);
            open.fetch_add(1, Ordering::Relaxed);
            metrics.connections.inc();
            let counted = Counted {
                peer: PeerInfo {
                    remote: Some(peer),
                    identities: Arc::default(),
                },
                open: Arc::clone(&open),
                metrics: metrics.clone(),
            };
            match &tls {
                None => {
                    if sender
                        .send(Ok(counted.wrap(Transport::Plain(socket))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(tls) => {
                    tokio::spawn(handshake(socket, counted, tls.clone(), sender.clone()));
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// The bookkeeping of an accepted connection, before its transport is ready.
struct Counted {
    peer: PeerInfo,
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Counted {
    fn wrap(self, inner: Transport) -> CountedStream {
        let stream = CountedStream {
            inner,
            peer: self.peer.clone(),
            open: Arc::clone(&self.open),
            metrics: self.metrics.clone(),
        };
        std::mem::forget(self);
        stream
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.dec();
    }
}

async fn handshake(
    socket: TcpStream,
    counted: Counted,
    tls: TlsReloader,
    sender: mpsc::Sender<io::Result<CountedStream>>,
) {
    let peer = counted.peer.remote;
    let Some(acceptor) = tls.acceptor() else {
        return;
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            counted.metrics.refuse("tls_handshake");
            tracing::warn!(?peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            counted.metrics.refuse("tls_handshake");
            tracing::warn!(?peer, "TLS handshake timed out");
            return;
        }
    };
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    if !tls.allows(leaf) {
        counted.metrics.refuse("client_identity");
        let presented = leaf.map(super::tls::identities).unwrap_or_default();
        tracing::warn!(
            ?peer,
            ?presented,
            "client identity not in xds.tls.allowed_identities; connection closed"
        );
        return;
    }
    let mut counted = counted;
    counted.peer.identities = Arc::new(leaf.map(super::tls::identities).unwrap_or_default());
    let _ = sender
        .send(Ok(counted.wrap(Transport::Tls(Box::new(stream)))))
        .await;
}
