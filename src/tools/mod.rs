//! The client tools that ship in the same binary, apart from the server: the command line
//! ([`cli`]), `actor-infer bench` ([`bench`]) and `actor-infer doctor` ([`doctor`]). They talk
//! to a server over its public APIs (one HTTP client, reqwest; gRPC through the generated
//! client), never through the server's internals, except `bench --raw`, which runs the model
//! in-process to measure the limit.

pub mod bench;
pub mod cli;
pub mod doctor;
