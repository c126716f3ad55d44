//! Observability: metrics and the admin HTTP endpoints.

pub mod http;
pub mod metrics;
