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

use super::{ActorId, ActorState, ActorTable, InferError, job::Texts, supervisor::ChildPanicked};
use crate::{
    fault::Fault,
    model::{Encoded, TextInput, TextTokenizer, TokenInfo, TokenizeError},
};

/// Every token of some texts, with its text, speciality and offsets (`/tokenize`).
#[derive(Message)]
#[rtype(result = "Result<Vec<Vec<TokenInfo>>, InferError>")]
pub struct Inspect {
    /// The texts.
    pub texts: Vec<String>,
    /// Add the model's special tokens (`[CLS]`, `[SEP]`).
    pub add_special_tokens: bool,
}

/// The texts of some lists of token ids (`/decode`).
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, InferError>")]
pub struct Decode {
    /// One list of ids per text.
    pub ids: Vec<Vec<u32>>,
    /// Leave special tokens out.
    pub skip_special_tokens: bool,
}

/// Tokenize the texts of one request.
#[derive(Message)]
#[rtype(result = "Result<Tokenized, InferError>")]
pub struct Tokenize {
    /// The request's texts (its [`Job`](super::job::Job)'s), moved here.
    pub texts: Texts,
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
    /// Starts the pool of `threads` tokenizer threads, named from `tokenizer-{first}` on.
    pub fn start_pool(
        first: usize,
        threads: usize,
        tokenizer: TextTokenizer,
        table: Arc<ActorTable>,
        supervisor: Recipient<ChildPanicked>,
    ) -> Addr<TokenizerActor> {
        let next = Arc::new(AtomicUsize::new(first));
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
            tracing::debug_span!(parent: &msg.span, "tokenize", texts = msg.texts.inputs.len());
        let start = Instant::now();
        let fault = msg.texts.inputs.iter().find_map(|t| match t {
            TextInput::Text(t) => crate::fault::detect(t),
            TextInput::Ids(_) => None,
        });
        let encodings = self.run(ctx, |tokenizer| {
            if fault == Some(Fault::TokenizerPanic) {
                panic!("injected tokenizer fault");
            }
            msg.texts
                .inputs
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    let pair = msg.texts.pairs.as_ref().map(|p| p[i].as_str());
                    tokenizer.encode_input(i, input, pair, msg.texts.truncate, msg.texts.direction)
                })
                .collect::<Result<Vec<_>, TokenizeError>>()
        })?;
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
}

impl TokenizerActor {
    /// Runs `f` on this thread's tokenizer; a panic restarts the actor like a tokenization's.
    fn run<T>(
        &mut self,
        ctx: &mut SyncContext<Self>,
        f: impl FnOnce(&TextTokenizer) -> Result<T, TokenizeError>,
    ) -> Result<T, InferError> {
        match super::catch(|| f(&self.tokenizer)) {
            Ok(r) => Ok(r?),
            Err(message) => {
                tracing::error!(actor = %self.id, %message, "tokenizer panicked; restarting it");
                self.supervisor.do_send(ChildPanicked {
                    actor: self.id,
                    message: message.clone(),
                });
                ctx.stop();
                Err(InferError::Panicked {
                    actor: self.id,
                    message: format!("{message}; the tokenizer has been restarted"),
                })
            }
        }
    }
}

impl Handler<Inspect> for TokenizerActor {
    type Result = Result<Vec<Vec<TokenInfo>>, InferError>;

    fn handle(&mut self, msg: Inspect, ctx: &mut Self::Context) -> Self::Result {
        self.run(ctx, |t| {
            msg.texts
                .iter()
                .enumerate()
                .map(|(i, text)| t.inspect(i, text, msg.add_special_tokens))
                .collect()
        })
    }
}

impl Handler<Decode> for TokenizerActor {
    type Result = Result<Vec<String>, InferError>;

    fn handle(&mut self, msg: Decode, ctx: &mut Self::Context) -> Self::Result {
        self.run(ctx, |t| {
            msg.ids
                .iter()
                .enumerate()
                .map(|(i, ids)| t.decode(i, ids, msg.skip_special_tokens))
                .collect()
        })
    }
}
