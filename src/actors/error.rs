//! What can go wrong inside the actors, in their own terms. The API layer maps each variant to
//! exactly one client-facing kind (`api::error`), with an exhaustive `match`.

use super::{ActorId, ActorKind};
use crate::model::TokenizeError;

/// Why the actors could not answer a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// A text could not be tokenized (too long with `truncate` off, or the tokenizer refused
    /// it): the client's input.
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    /// The Router's queue is full (`batching.max_queue_texts`).
    #[error(
        "the queue holds {waiting} texts and this request adds {adding}, over \
         batching.max_queue_texts = {limit}; retry later"
    )]
    QueueFull {
        /// Texts waiting (tokenizing or queued).
        waiting: usize,
        /// Texts this request would add.
        adding: usize,
        /// The limit.
        limit: usize,
    },
    /// The model is still loading or warming up.
    #[error("the model is still loading; retry when /ready answers 200")]
    NotReady,
    /// The server is stopping and takes no new work.
    #[error("the server is shutting down and takes no new requests")]
    ShuttingDown,
    /// The request's deadline passed while its texts waited; they were dropped before
    /// inference.
    #[error("the request's deadline passed while it waited; it was dropped before inference")]
    Expired,
    /// libtorch returned an error on the batch holding this request (out of memory, a
    /// TorchScript module refusing the input). The worker goes on serving.
    #[error("{worker} could not run the batch holding this request: {message}")]
    Forward {
        /// Which worker.
        worker: ActorId,
        /// libtorch's message.
        message: String,
    },
    /// An actor panicked while handling this request (a bug); it was restarted or the server
    /// is stopping, as the README's supervision table says.
    #[error("{actor} failed on this request ({message})")]
    Panicked {
        /// Which actor.
        actor: ActorId,
        /// The panic's message.
        message: String,
    },
    /// An actor's mailbox is closed (it stopped).
    #[error("the {} actor is gone", .0.as_str())]
    Gone(ActorKind),
}
