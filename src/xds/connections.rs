//! Accepts TCP connections for the gRPC server, closing those over `xds.max_connections`.

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
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::{LimitLabels, Metrics};

/// A connection that counts itself open until dropped.
#[derive(Debug)]
pub struct CountedStream {
    inner: TcpStream,
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.dec();
    }
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(context, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(context, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }
    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(context, buffers)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts on `listener` until the returned stream is dropped; connections past `max_open`
/// are closed at once and counted as refusals.
pub fn accept_limited(
    listener: TcpListener,
    max_open: usize,
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
                metrics
                    .refusals
                    .get_or_create(&LimitLabels {
                        limit: "max_connections".into(),
                    })
                    .inc();
                tracing::warn!(%peer, max_open, "connection refused: xds.max_connections reached");
                drop(socket);
                continue;
            }
            let _ = socket.set_nodelay(true);
            open.fetch_add(1, Ordering::Relaxed);
            metrics.connections.inc();
            let stream = CountedStream {
                inner: socket,
                open: Arc::clone(&open),
                metrics: metrics.clone(),
            };
            if sender.send(Ok(stream)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}
