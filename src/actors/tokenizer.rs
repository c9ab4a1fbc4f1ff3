//! Tokenizer: a pool of `tokenizer.workers` threads (an actix `SyncArbiter`) that turn texts
//! into token ids. Blocking work, so never on an async executor.
//!
//! Owns: one [`TextTokenizer`] per thread. Sent to by: the Router ([`Tokenize`]). The pool
//! shares one mailbox, so whichever thread is free takes the next request. It stops when the
//! last `Addr` to it is dropped (the Router's and the Supervisor's); each thread then records
//! itself as stopped in the [`ActorTable`].

use std::{
    cell::Cell,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actix::prelude::*;

use super::{ActorId, ActorState, ActorTable, InferError, supervisor::ChildPanicked};
use crate::{
    fault::Fault,
    model::{Encoded, TextTokenizer, TokenizeError},
};

/// Tokenize the texts of one request.
#[derive(Message)]
#[rtype(result = "Result<Tokenized, InferError>")]
pub struct Tokenize {
    /// The request's texts, in order.
    pub texts: Vec<String>,
    /// Second segments, one per text, for a cross-encoder's (text, pair) inputs; `None` for
    /// single texts.
    pub pairs: Option<Vec<String>>,
    /// When false, a text over the maximum length fails the request.
    pub truncate: bool,
    /// The request's span, so this thread's log lines belong to it.
    pub span: tracing::Span,
}

/// The texts of one request, tokenized.
#[derive(Debug)]
pub struct Tokenized {
    /// One per text, in order.
    pub encodings: Vec<Encoded>,
    /// Time spent tokenizing (not waiting for a thread).
    pub elapsed: Duration,
    /// A fault a test asked for (see `crate::fault`), for the actors downstream.
    pub fault: Option<Fault>,
}

/// One tokenizer thread.
pub struct TokenizerActor {
    id: ActorId,
    tokenizer: TextTokenizer,
    table: Arc<ActorTable>,
    supervisor: Recipient<ChildPanicked>,
}

thread_local! {
    /// This thread's place in the pool, fixed the first time the factory runs on it, so a
    /// restarted actor keeps its predecessor's name.
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

impl TokenizerActor {
    /// Starts the pool of `threads` tokenizer threads.
    pub fn start_pool(
        threads: usize,
        tokenizer: TextTokenizer,
        table: Arc<ActorTable>,
        supervisor: Recipient<ChildPanicked>,
    ) -> Addr<TokenizerActor> {
        let next = Arc::new(AtomicUsize::new(0));
        SyncArbiter::start(threads, move || {
            let slot = SLOT.with(|s| match s.get() {
                Some(slot) => slot,
                None => {
                    let slot = next.fetch_add(1, Ordering::Relaxed);
                    s.set(Some(slot));
                    slot
                }
            });
            let id = ActorId::Tokenizer(slot);
            table.set(id, ActorState::Idle);
            TokenizerActor {
                id,
                tokenizer: tokenizer.clone(),
                table: table.clone(),
                supervisor: supervisor.clone(),
            }
        })
    }
}

impl Actor for TokenizerActor {
    type Context = SyncContext<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.table.set(self.id, ActorState::Stopped);
        tracing::debug!(actor = %self.id, "stopped");
    }
}

impl Handler<Tokenize> for TokenizerActor {
    type Result = Result<Tokenized, InferError>;

    fn handle(&mut self, msg: Tokenize, ctx: &mut Self::Context) -> Self::Result {
        let _enter = msg.span.enter();
        // Not entered, so this thread's log lines stay the request's: it only times the work.
        let _tokenize =
            tracing::debug_span!(parent: &msg.span, "tokenize", texts = msg.texts.len());
        let start = Instant::now();
        let tokenizer = &self.tokenizer;
        let fault = msg.texts.iter().find_map(|t| crate::fault::detect(t));
        let result = super::catch(|| {
            if fault == Some(Fault::TokenizerPanic) {
                panic!("injected tokenizer fault");
            }
            msg.texts
                .iter()
                .enumerate()
                .map(|(i, text)| match &msg.pairs {
                    Some(pairs) => tokenizer.encode_pair(i, text, &pairs[i], msg.truncate),
                    None => tokenizer.encode(i, text, msg.truncate),
                })
                .collect::<Result<Vec<_>, TokenizeError>>()
        });
        match result {
            Ok(Ok(encodings)) => {
                tracing::debug!(
                    actor = %self.id,
                    texts = encodings.len(),
                    elapsed_us = start.elapsed().as_micros() as u64,
                    "tokenized"
                );
                Ok(Tokenized {
                    encodings,
                    elapsed: start.elapsed(),
                    fault,
                })
            }
            Ok(Err(e)) => Err(InferError::Tokenize(e)),
            Err(message) => {
                tracing::error!(actor = %self.id, %message, "tokenizer panicked; restarting it");
                self.supervisor.do_send(ChildPanicked {
                    actor: self.id,
                    message: message.clone(),
                });
                // In a SyncContext, stopping means the SyncArbiter builds a fresh actor.
                ctx.stop();
                Err(InferError::Panicked {
                    actor: self.id,
                    message: format!("{message}; the tokenizer has been restarted"),
                })
            }
        }
    }
}
