//! Loopback HTTP for readiness checks and admin APIs: one request, a 2 s timeout, status and body.

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub use hyper::Method;

/// How long one exchange (connect, request, whole body) may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends one plain-HTTP request with `body` and returns the status and the body (lossy UTF-8).
pub async fn http(method: Method, url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body.to_owned())))
        .with_context(|| format!("building a request to {url}"))?;
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| format!("{url} timed out after {TIMEOUT:?}"))?
        .with_context(|| format!("requesting {url}"))
}

/// GET `url`: its status and body.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http(Method::GET, url, "").await
}

/// GET `url`, only when it answers 200.
pub async fn get_ok(url: &str) -> Option<String> {
    match http_get(url).await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released), never handed out
/// twice by this process.
///
/// Ports come from below the kernel's ephemeral range when there is room: a port picked from
/// inside it can be taken, before the child binds it, as the local port of any outgoing
/// connection (a scrape, an xDS client), which fails the child with "address already in use".
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let Some((low, high)) = below_ephemeral_range() else {
        return bind_any();
    };
    let span = u32::from(high - low) + 1;
    // A start that differs between processes, so concurrent test binaries rarely meet.
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
    let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(u32::from(low) + offset) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bind_any()
}

/// The ports between 10,000 and the start of the ephemeral range (Linux's
/// `ip_local_port_range`), when that leaves at least 2,000.
fn below_ephemeral_range() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let first: u16 = range.split_whitespace().next()?.parse().ok()?;
    (first > 12_000).then_some((10_000, first - 1))
}

fn bind_any() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener
        .local_addr()
        .context("reading a local address")?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gets_and_posts_on_loopback() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0; 4096];
                let read = socket.read(&mut request).await.unwrap();
                let text = String::from_utf8_lossy(&request[..read]).into_owned();
                let answer = if text.starts_with("POST") {
                    "posted"
                } else {
                    "got"
                };
                let response = format!(
                    "HTTP/1.1 201 Created\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(http_get(&url).await.unwrap(), (201, "got".to_owned()));
        assert_eq!(
            http(Method::POST, &url, "2").await.unwrap(),
            (201, "posted".to_owned())
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error_naming_the_url() {
        let url = format!("http://127.0.0.1:{}/", free_port().unwrap());
        let error = http_get(&url).await.unwrap_err();
        assert!(format!("{error:#}").contains(&url), "{error:#}");
        assert_eq!(get_ok(&url).await, None);
    }

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        if let Some((low, high)) = below_ephemeral_range() {
            assert!(
                ports.iter().all(|port| (low..=high).contains(port)),
                "{ports:?}"
            );
        }
    }
}
