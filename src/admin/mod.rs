//! The internal admin listener: liveness, readiness, Prometheus metrics and
//! the provisioning API (`/internal/sandboxes`, in [`sandboxes`]). It is a
//! separate listener (default 127.0.0.1) so none of it is reachable from the
//! public one.

mod sandboxes;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{Body, full};
use crate::gateway::Gateway;
use crate::refusal::Refusal;
use crate::server::{ConnInfo, Handler};

/// The admin API.
pub struct Admin {
    gateway: Arc<Gateway>,
}

impl Admin {
    /// The admin API of `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        let request_id = crate::edge::request_id(req.headers());
        let mut resp = match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => {
                text(StatusCode::OK, "application/json", r#"{"status":"alive"}"#)
            }
            (&Method::GET, "/readyz") => {
                if self.gateway.is_ready() {
                    text(StatusCode::OK, "application/json", r#"{"status":"ready"}"#)
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        r#"{"status":"not_ready"}"#,
                    )
                }
            }
            (&Method::GET, "/metrics") => match crate::telemetry::render_metrics() {
                Some(rendered) => text(StatusCode::OK, "text/plain; version=0.0.4", rendered),
                None => Refusal::Internal.into_response(&request_id),
            },
            (_, path)
                if path == "/internal/sandboxes"
                    || path.starts_with("/internal/sandboxes/")
                    || path == "/internal/engagement" =>
            {
                let sandbox = self.gateway.sandbox();
                match sandboxes::handle(&self.gateway, &sandbox, req).await {
                    Ok(resp) => resp,
                    Err(refusal) => {
                        crate::telemetry::RequestRefused(&refusal).emit();
                        refusal.into_response(&request_id)
                    }
                }
            }
            (_, path) => Refusal::AdminNotFound {
                path: path.to_owned(),
            }
            .into_response(&request_id),
        };
        crate::edge::set_request_id(resp.headers_mut(), &request_id);
        resp
    }
}
