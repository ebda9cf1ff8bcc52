//! A small HTTP/1.1 server for admin, readiness and metrics endpoints.
//!
//! Routes are exact paths mapped to handlers that build a response from the
//! proxy's state; anything else is 404. Handlers are synchronous and cheap
//! (they read snapshots), so each request is served inline.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a handler returns.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Self {
                status: StatusCode::OK,
                content_type: "application/json",
                body,
            },
            Err(err) => Self::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("serializing: {err}\n"),
            ),
        }
    }

    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// A handler: method and query string in, reply out.
/// Prometheus' scrape paths, `/metrics` and Istio's `/stats/prometheus`,
/// both answering the OpenMetrics text `render` returns.
pub fn metrics_routes(render: impl Fn() -> String + Send + Sync + 'static) -> Routes {
    let render = Arc::new(render);
    let other = render.clone();
    let reply = |text: String| Reply {
        status: StatusCode::OK,
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body: text.into_bytes(),
    };
    Routes::default()
        .route("/metrics", move |_, _| reply(render()))
        .route("/stats/prometheus", move |_, _| reply(other()))
}

pub type Handler = Arc<dyn Fn(&Method, Option<&str>) -> Reply + Send + Sync>;

/// Path → handler.
#[derive(Clone, Default)]
pub struct Routes(BTreeMap<&'static str, Handler>);

impl Routes {
    pub fn route(
        mut self,
        path: &'static str,
        handler: impl Fn(&Method, Option<&str>) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.0.insert(path, Arc::new(handler));
        self
    }

    fn handle(&self, request: &Request<Incoming>) -> Reply {
        match self.0.get(request.uri().path()) {
            Some(handler) => handler(request.method(), request.uri().query()),
            None => Reply::text(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint; try one of: {}\n",
                    self.0.keys().copied().collect::<Vec<_>>().join(" ")
                ),
            ),
        }
    }
}

/// Serves `routes` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, routes: Routes) {
    let routes = Arc::new(routes);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let reply = routes.handle(&request);
                async move {
                    let response = Response::builder()
                        .status(reply.status)
                        .header("content-type", reply.content_type)
                        .body(Full::new(Bytes::from(reply.body)))
                        .expect("static headers are valid");
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %err, "admin connection ended with an error");
            }
        });
    }
}

/// Binds `addr` and returns the listener and the address actually bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
