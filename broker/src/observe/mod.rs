//! Observability: the series' names (`metrics`, a leaf), the gauges read
//! from the node when scraped (`gauges`), and the admin HTTP endpoints.

pub mod gauges;
pub mod http;
pub mod metrics;
