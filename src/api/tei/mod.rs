//! Text Embeddings Inference's API, as TEI 1.9 defines it: its HTTP routes ([`http`]) and its
//! gRPC package `tei.v1` ([`grpc`]), both through the shared pipeline ([`super::pipeline`]).

pub mod grpc;
pub mod http;
