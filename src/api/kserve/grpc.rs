//! The Open Inference Protocol (KServe v2 / Triton) over gRPC: `inference.GRPCInferenceService`
//! (`proto/inference/grpc_service.proto`) on the same port as `actor_infer.v1`, with
//! `ServerLive`, `ServerReady`, `ModelReady`, `ServerMetadata`, `ModelMetadata` and
//! `ModelInfer`. Inputs are read from `raw_input_contents` when the client sends them raw (as
//! tritonclient does) or from `contents.bytes_contents`; outputs always go back in
//! `raw_output_contents`, as Triton answers. `ModelInfer` goes through the same opening and
//! closing as every gRPC inference method (`GrpcApi::inference`): deadline, span, trace context,
//! outcome metrics, and errors from the one table.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::{
    Shared,
    error::ApiError,
    grpc::{self, WithRequestId},
    kserve::{self as oip, InferRequest, InputTensor, Parameters},
    pipeline::Reply,
};

/// Code generated from `proto/inference/grpc_service.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("inference");
}

/// Encoded file descriptor set of the protocol's proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// The service, ready for `Server::builder().add_service`, taking messages up to
/// `server.max_request_bytes`.
pub fn service(shared: Arc<Shared>) -> GrpcInferenceServiceServer<V2Grpc> {
    let limit = shared.config.server.max_request_bytes;
    GrpcInferenceServiceServer::new(V2Grpc { shared })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// `inference.GRPCInferenceService`.
pub struct V2Grpc {
    shared: Arc<Shared>,
}

impl WithRequestId for pb::ModelInferRequest {
    /// The protocol's `id` names the request in logs too; it stays in the request, since the
    /// response echoes it.
    fn take_request_id(&mut self) -> String {
        self.id.clone()
    }
}

impl V2Grpc {
    /// The API key, for `ModelInfer` always and for metadata when
    /// `server.api_key_protects_metrics` (health stays open, as the HTTP probes).
    fn authorize<T>(&self, request: &Request<T>, metadata_route: bool) -> Result<(), Status> {
        let server = &self.shared.config.server;
        if metadata_route && !server.api_key_protects_metrics {
            return Ok(());
        }
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        crate::api::check_api_key(server, header).map_err(|e| {
            crate::api::record::<()>(&self.shared.recorder, "grpc", &Err(e.clone()));
            Status::from(e)
        })
    }

    fn ready(&self) -> bool {
        self.shared.lifecycle.is_ready() && !self.shared.lifecycle.is_stopping()
    }
}

/// A parameter's boolean value, or an error naming it.
fn bool_param(
    params: &std::collections::HashMap<String, pb::InferParameter>,
    key: &str,
) -> Result<Option<bool>, ApiError> {
    use pb::infer_parameter::ParameterChoice;
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::BoolParam(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::validation(format!(
            "parameter `{key}` must be a bool_param, not {other:?}"
        ))),
    }
}

/// The protocol's request from the message: raw inputs when `raw_input_contents` is set (one
/// entry per input), else each input's `contents.bytes_contents`.
fn decode(req: pb::ModelInferRequest) -> Result<InferRequest, ApiError> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(ApiError::validation(format!(
            "{} raw_input_contents for {} inputs; send one per input, or none",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        let elements = match raw.get(i) {
            Some(bytes) if input.datatype == "BYTES" => oip::split_raw_bytes(&input.name, bytes)?,
            Some(_) => Vec::new(),
            None => input.contents.map(|c| c.bytes_contents).unwrap_or_default(),
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            elements,
        });
    }
    let outputs = (!req.outputs.is_empty())
        .then(|| req.outputs.into_iter().map(|o| o.name).collect::<Vec<_>>());
    let p = &req.parameters;
    Ok(InferRequest {
        inputs,
        outputs,
        parameters: Parameters {
            normalize: bool_param(p, "normalize")?,
            truncate: bool_param(p, "truncate")?,
            raw_scores: bool_param(p, "raw_scores")?,
        },
    })
}

fn tensor_metadata(t: oip::TensorMetadata) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: t.name.into(),
        datatype: t.datatype.into(),
        shape: t.shape,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for V2Grpc {
    async fn server_live(
        &self,
        _request: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.get_ref();
        oip::model(&self.shared, &r.name, Some(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        self.authorize(&request, true)?;
        Ok(Response::new(pb::ServerMetadataResponse {
            name: oip::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: oip::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.authorize(&request, true)?;
        let r = request.get_ref();
        let lease = oip::model(&self.shared, &r.name, Some(&r.version))?;
        let m = oip::metadata(&lease);
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions.iter().map(|v| v.to_string()).collect(),
            platform: m.platform,
            inputs: m.inputs.into_iter().map(tensor_metadata).collect(),
            outputs: m.outputs.into_iter().map(tensor_metadata).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        self.authorize(&request, false)?;
        let shared = &self.shared;
        let (response, _) = grpc::unary(
            shared,
            request,
            "ModelInfer",
            |req: pb::ModelInferRequest, call| async move {
                let m = oip::model(shared, &req.model_name, Some(&req.model_version))?;
                call.chose(&m);
                let id = req.id.clone();
                let out = oip::infer(shared, &m, decode(req)?, call).await?;
                let (outputs, raw) = out
                    .outputs
                    .into_iter()
                    .map(|o| {
                        let tensor = pb::model_infer_response::InferOutputTensor {
                            name: o.name.into(),
                            datatype: o.data.datatype().into(),
                            shape: o.shape,
                            parameters: Default::default(),
                            contents: None,
                        };
                        (tensor, o.data.to_raw())
                    })
                    .unzip();
                Ok(Reply {
                    body: pb::ModelInferResponse {
                        model_name: m.name.clone(),
                        model_version: m.version.to_string(),
                        id,
                        parameters: Default::default(),
                        outputs,
                        raw_output_contents: raw,
                    },
                    texts: out.texts,
                    timings: out.timings,
                })
            },
        )
        .await?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_input(raw: bool) -> pb::ModelInferRequest {
        let texts: [&[u8]; 2] = [b"a", b"bc"];
        let contents = (!raw).then(|| pb::InferTensorContents {
            bytes_contents: texts.iter().map(|t| t.to_vec()).collect(),
            ..Default::default()
        });
        pb::ModelInferRequest {
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape: vec![2],
                parameters: Default::default(),
                contents,
            }],
            raw_input_contents: if raw {
                vec![oip::Data::Bytes(texts.iter().map(|t| t.to_vec()).collect()).to_raw()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_contents_decode_alike() {
        for raw in [true, false] {
            let r = decode(text_input(raw)).unwrap();
            assert_eq!(r.inputs[0].elements, vec![b"a".to_vec(), b"bc".to_vec()]);
            assert!(r.outputs.is_none());
        }
        let mut bad = text_input(true);
        bad.raw_input_contents.push(Vec::new());
        assert!(
            decode(bad)
                .unwrap_err()
                .message
                .contains("raw_input_contents")
        );
    }
}
