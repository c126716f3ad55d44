//! Which APIs and versions the door serves, and decoding a request once
//! [`crate::walk`] has bounded it.
//!
//! Every served version predates Kafka's "flexible" encoding except
//! ApiVersions v3, which clients try first (KIP-511). The ranges start
//! where RecordBatch v2 starts (Produce v3, Fetch v4): older clients that
//! only speak message sets v0/v1 are refused at ApiVersions.

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::Decodable;

/// (API, lowest version, highest version) served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 8),
    (ApiKey::Fetch, 4, 11),
    (ApiKey::ListOffsets, 1, 5),
    (ApiKey::Metadata, 0, 8),
    // librdkafka counts SASL as supported only if v0 is; after a v0
    // handshake the exchange is bare size-prefixed frames (`server`).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::SaslAuthenticate, 0, 1),
];

/// Whether `key` at `version` is served.
pub fn serves(key: ApiKey, version: i16) -> bool {
    SERVED
        .iter()
        .any(|&(k, lo, hi)| k == key && (lo..=hi).contains(&version))
}

/// The highest version of `key` served, if any.
pub fn highest(key: ApiKey) -> Option<i16> {
    SERVED.iter().find(|&&(k, _, _)| k == key).map(|&(_, _, hi)| hi)
}

/// A decoded request of a served API.
#[derive(Debug, Clone)]
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    SaslHandshake(SaslHandshakeRequest),
    SaslAuthenticate(SaslAuthenticateRequest),
}

/// Decodes `body`, which [`crate::walk::check`] has passed for `key` at
/// `version`. Errors are the crate's (text that is not UTF-8, say).
pub fn decode(key: ApiKey, version: i16, body: Bytes) -> Result<Request, String> {
    let mut b = body;
    Ok(match key {
        ApiKey::ApiVersions => {
            Request::ApiVersions(ApiVersionsRequest::decode(&mut b, version).map_err(|e| e.to_string())?)
        }
        ApiKey::Metadata => {
            Request::Metadata(MetadataRequest::decode(&mut b, version).map_err(|e| e.to_string())?)
        }
        ApiKey::Produce => {
            Request::Produce(ProduceRequest::decode(&mut b, version).map_err(|e| e.to_string())?)
        }
        ApiKey::Fetch => Request::Fetch(FetchRequest::decode(&mut b, version).map_err(|e| e.to_string())?),
        ApiKey::ListOffsets => {
            Request::ListOffsets(ListOffsetsRequest::decode(&mut b, version).map_err(|e| e.to_string())?)
        }
        ApiKey::SaslHandshake => {
            Request::SaslHandshake(SaslHandshakeRequest::decode(&mut b, version).map_err(|e| e.to_string())?)
        }
        ApiKey::SaslAuthenticate => Request::SaslAuthenticate(
            SaslAuthenticateRequest::decode(&mut b, version).map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("{other:?} is not served")),
    })
}
