//! gRPC refusals a load balancer can act on. tonic sends an error as a "trailers-only" response:
//! HTTP 200 with `grpc-status` in the headers. A balancer such as nginx only sees the HTTP 200
//! and passes the refusal to the client, so a replica that is loading or draining would fail
//! the client's call instead of having it retried on another replica. This wrapper turns
//! trailers-only `UNAVAILABLE` responses (loading, shutting down: the server did no work) into
//! HTTP 503, which `grpc_next_upstream http_503` (nginx) and Envoy's `retry_on: 5xx` retry.
//! gRPC clients see the same status: they read `grpc-status` from the headers first, and the
//! gRPC spec maps a bare HTTP 503 to `UNAVAILABLE` anyway.

use futures::{TryFutureExt, future::MapOk};
use tonic::{
    codegen::{Context, Poll, Service, http},
    server::NamedService,
};

/// Wraps a generated gRPC service (health and reflection are left alone).
#[derive(Clone, Debug)]
pub struct UnavailableAs503<S>(pub S);

impl<S: NamedService> NamedService for UnavailableAs503<S> {
    const NAME: &'static str = S::NAME;
}

type Mark<B> = fn(http::Response<B>) -> http::Response<B>;

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for UnavailableAs503<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = MapOk<S::Future, Mark<ResB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        self.0.call(req).map_ok(mark as Mark<ResB>)
    }
}

/// `grpc-status: 14` in the headers of an HTTP 200 → HTTP 503.
fn mark<B>(mut res: http::Response<B>) -> http::Response<B> {
    let unavailable = res
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14");
    if unavailable && res.status() == http::StatusCode::OK {
        *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    res
}
