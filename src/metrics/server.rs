//! The HTTP listener (`metrics.listen`): `/metrics` in Prometheus text format, `/healthz` (200
//! unless the worker's loop stalled) and `/readyz` (200 or 503, the body says what is not ready). A minimal
//! hyper server: GET and HEAD only, HTTP/1.1, one task per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder as _, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use super::{Health, Metrics, ProbeReport};

/// A bound listener, not serving yet.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) at once, so the address is known before the
    /// worker starts. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Server> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener: TcpListener::from_std(listener)?,
        })
    }

    /// The address the listener is bound to: the port picked when `bind` was given port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves `metrics` and `health` in a background task until the returned guard is dropped.
    pub fn spawn(self, metrics: Metrics, health: Arc<Health>) -> DropGuard {
        let stop = CancellationToken::new();
        tokio::spawn(self.serve(metrics, health, stop.clone()));
        stop.drop_guard()
    }

    /// Serves until `stop` is cancelled; open connections then finish their current request.
    pub async fn serve(self, metrics: Metrics, health: Arc<Health>, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: wait instead of spinning.
                        warn!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = respond(&req, &metrics, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                let mut conn =
                    pin!(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => exposition(metrics),
        "/healthz" => probe(health.liveness()),
        "/readyz" => probe(health.readiness()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz and /readyz are served\n".into(),
        ),
    }
}

fn probe(report: ProbeReport) -> Response<Full<Bytes>> {
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, report.body)
}

fn exposition(metrics: &Metrics) -> Response<Full<Bytes>> {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&metrics.registry().gather(), &mut body) {
        warn!(error = %e, "cannot encode the metrics");
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    }
    response(StatusCode::OK, encoder.format_type(), body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.into_bytes())
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid status and header make a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::STALLED_AFTER;

    async fn serve(metrics: &Metrics, health: Arc<Health>) -> (String, DropGuard) {
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let base = format!("http://{}", server.local_addr());
        (base, server.spawn(metrics.clone(), health))
    }

    #[tokio::test]
    async fn serves_metrics_health_and_health() {
        let metrics = Metrics::new();
        let health = Arc::new(Health::new(STALLED_AFTER, &metrics));
        let (base, _guard) = serve(&metrics, health.clone()).await;
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{base}{path}")).send();

        let metrics = get("/metrics").await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(
            metrics.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let body = metrics.text().await.unwrap();
        let build = format!(
            "model_pruner_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(body.contains(&build), "{body}");
        assert!(body.contains("# TYPE model_pruner_messages_finished_total counter"));

        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        let ready = get("/readyz").await.unwrap();
        assert_eq!(ready.status(), 503);
        assert!(
            ready
                .text()
                .await
                .unwrap()
                .starts_with("not ready: broker\n")
        );
        health.set_consuming(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        health.beat();
        assert_eq!(get("/healthz").await.unwrap().status(), 200);

        assert_eq!(get("/nope").await.unwrap().status(), 404);
        let post = http.post(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(post.status(), 405);
    }

    #[tokio::test]
    async fn a_stalled_loop_fails_the_liveness_probe() {
        let metrics = Metrics::new();
        let health = Arc::new(Health::new(Duration::ZERO, &metrics));
        health.beat();
        let (base, _guard) = serve(&metrics, health).await;
        let live = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(live.status(), 503);
        assert!(live.text().await.unwrap().starts_with("stalled: "));
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_the_listener() {
        let metrics = Metrics::new();
        let (base, guard) = serve(&metrics, Arc::new(Health::new(STALLED_AFTER, &metrics))).await;
        drop(guard);
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while http.get(format!("{base}/healthz")).send().await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still serving");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
