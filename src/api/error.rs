//! Errors a client can see, and the one table that maps them to HTTP status and gRPC code.
//! Every error a client receives, over either transport, is built from this table: the
//! actors' own errors ([`InferError`]) map into it once ([`ErrorKind::of`]), and gRPC statuses
//! are only made from an [`ApiError`]. Both renderings live here: HTTP's (`ResponseError`, the
//! body [`ErrorBody`]) and gRPC's (`tonic::Status`).

use std::fmt;

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::actors::InferError;

/// What went wrong, from the client's point of view. Each kind has exactly one HTTP status,
/// one gRPC code and one `error_type` string ([`ErrorKind::http_status`],
/// [`ErrorKind::grpc_code`], [`ErrorKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or asks for something impossible.
    Validation,
    /// The route or resource does not exist.
    NotFound,
    /// The request names a model (or model version) this server does not serve.
    ModelNotFound,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// The body is larger than allowed.
    PayloadTooLarge,
    /// The body's content type is not one the route reads.
    UnsupportedMediaType,
    /// The request is over a configured limit (texts per request, characters per text); it
    /// will never succeed as it is, so it is not retryable.
    LimitExceeded,
    /// An inference route without the right API key.
    Unauthenticated,
    /// The server is at capacity; retry later.
    Overloaded,
    /// The model is still loading or warming up.
    NotReady,
    /// The server is stopping and takes no new work.
    ShuttingDown,
    /// The request conflicts with work under way (a reload while another runs).
    Conflict,
    /// The request's deadline passed before it could be served.
    DeadlineExceeded,
    /// The loaded model cannot serve this route (rerank on an embedding model, embed on a
    /// classifier).
    WrongModelKind,
    /// The client went away before its answer was ready (recorded in metrics; nobody reads
    /// the answer).
    ClientGone,
    /// A bug or a failure inside the server (a worker panicked, a forward failed).
    Internal,
}

impl ErrorKind {
    /// Every kind (what the metrics pre-resolve; the table below must have each).
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Validation,
        ErrorKind::NotFound,
        ErrorKind::ModelNotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::LimitExceeded,
        ErrorKind::Unauthenticated,
        ErrorKind::Overloaded,
        ErrorKind::NotReady,
        ErrorKind::ShuttingDown,
        ErrorKind::Conflict,
        ErrorKind::DeadlineExceeded,
        ErrorKind::WrongModelKind,
        ErrorKind::ClientGone,
        ErrorKind::Internal,
    ];

    /// The table: kind → (`error_type`, HTTP status, gRPC code). An exhaustive match, so a
    /// new kind cannot be left out.
    fn row(self) -> (&'static str, u16, tonic::Code) {
        use tonic::Code;
        match self {
            ErrorKind::Validation => ("validation", 400, Code::InvalidArgument),
            ErrorKind::NotFound => ("not_found", 404, Code::NotFound),
            ErrorKind::ModelNotFound => ("model_not_found", 404, Code::NotFound),
            ErrorKind::MethodNotAllowed => ("method_not_allowed", 405, Code::Unimplemented),
            ErrorKind::PayloadTooLarge => ("payload_too_large", 413, Code::ResourceExhausted),
            ErrorKind::UnsupportedMediaType => {
                ("unsupported_media_type", 415, Code::InvalidArgument)
            }
            ErrorKind::LimitExceeded => ("limit_exceeded", 413, Code::InvalidArgument),
            ErrorKind::Unauthenticated => ("unauthenticated", 401, Code::Unauthenticated),
            ErrorKind::Overloaded => ("overloaded", 429, Code::ResourceExhausted),
            ErrorKind::NotReady => ("not_ready", 503, Code::Unavailable),
            ErrorKind::ShuttingDown => ("shutting_down", 503, Code::Unavailable),
            ErrorKind::Conflict => ("conflict", 409, Code::Aborted),
            ErrorKind::DeadlineExceeded => ("deadline_exceeded", 504, Code::DeadlineExceeded),
            ErrorKind::WrongModelKind => ("wrong_model_kind", 400, Code::FailedPrecondition),
            // 499 as nginx logs it; no client ever sees this answer.
            ErrorKind::ClientGone => ("client_gone", 499, Code::Cancelled),
            ErrorKind::Internal => ("internal", 500, Code::Internal),
        }
    }

    /// The `error_type` field of JSON errors.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    /// HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        self.row().1
    }

    /// gRPC status code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        self.row().2
    }

    /// The kind of an actors' error: the one place the actors' failures meet the table.
    pub fn of(e: &InferError) -> ErrorKind {
        match e {
            InferError::Tokenize(_) => ErrorKind::Validation,
            InferError::QueueFull { .. } => ErrorKind::Overloaded,
            InferError::NotReady => ErrorKind::NotReady,
            InferError::ShuttingDown => ErrorKind::ShuttingDown,
            InferError::Expired => ErrorKind::DeadlineExceeded,
            InferError::Forward { .. } | InferError::Panicked { .. } | InferError::Gone(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// An error for a client: its kind and a message that names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Which row of the table applies.
    pub kind: ErrorKind,
    /// Human-readable, specific message.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A malformed or impossible request.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// A failure inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The server is stopping.
    pub fn shutting_down() -> Self {
        Self::new(
            ErrorKind::ShuttingDown,
            "the server is shutting down and takes no new requests",
        )
    }

    /// The loaded model (of kind `kind`, serving `routes`) cannot serve `route`.
    pub fn wrong_model_kind(route: &str, kind: &str, routes: &[&str]) -> Self {
        Self::new(
            ErrorKind::WrongModelKind,
            format!(
                "this model's kind is {kind}: it cannot serve {route}; it serves {}",
                routes.join(", ")
            ),
        )
    }

    /// The request's deadline passed before its answer was ready.
    pub fn deadline_exceeded(limit: std::time::Duration, source: &str) -> Self {
        Self::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "the request's deadline ({:.3} s, {source}) passed before it was served",
                limit.as_secs_f64()
            ),
        )
    }

    /// The model is not loaded and warmed up yet.
    pub fn not_ready() -> Self {
        Self::new(
            ErrorKind::NotReady,
            "the model is still loading; retry when /ready answers 200",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.kind.grpc_code(), e.message)
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        ApiError::new(ErrorKind::of(&e), e.to_string())
    }
}

/// Every error's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, naming the field, limit or state at fault.
    pub error: String,
    /// The kind (`validation`, `overloaded`, ...; the README's table).
    pub error_type: &'static str,
}

// HTTP's rendering of the table: the status, `Retry-After` on the kinds worth retrying,
// `WWW-Authenticate` for a missing key, and the body `{"error", "error_type"}` (gRPC's is
// `From<ApiError> for tonic::Status` above).
impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.http_status()).expect("the error table holds valid statuses")
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(
            self.kind,
            ErrorKind::NotReady | ErrorKind::ShuttingDown | ErrorKind::Overloaded
        ) {
            res.insert_header(("Retry-After", "1"));
        }
        if self.kind == ErrorKind::Unauthenticated {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        let mut res = res.json(ErrorBody {
            error: self.message.clone(),
            error_type: self.kind.as_str(),
        });
        // For the access line.
        res.extensions_mut().insert(Refused {
            kind: self.kind.as_str(),
            message: self.message.clone(),
        });
        res
    }
}

/// Why a response refused its request (the access line's `error`).
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_error_type() {
        let names: std::collections::BTreeSet<&str> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names.len(),
            ErrorKind::ALL.len(),
            "error_type strings are unique"
        );
        assert_eq!(ErrorKind::Overloaded.http_status(), 429);
        assert_eq!(
            ErrorKind::ShuttingDown.grpc_code(),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn actors_errors_map_to_the_table() {
        let e: ApiError = InferError::QueueFull {
            waiting: 3,
            adding: 2,
            limit: 4,
        }
        .into();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert!(
            e.message.contains("batching.max_queue_texts = 4"),
            "{}",
            e.message
        );
        let e: ApiError = InferError::Expired.into();
        assert_eq!(e.kind.grpc_code(), tonic::Code::DeadlineExceeded);
    }
}
