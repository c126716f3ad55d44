//! The broker's configuration file (TOML). Every key has a default, so an
//! empty file is a valid single-node configuration; unknown keys are
//! refused with their name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::BrokerError;

/// A broker's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where shards, the index, metadata and development certificates live.
    pub data_dir: PathBuf,
    /// This broker's id in metadata replies.
    pub broker_id: u64,
    /// QUIC address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address clients are told to use; defaults to the bound address.
    pub advertise: Option<String>,
    pub tls: TlsConfig,
    pub log: LogSettings,
    /// RocksDB block cache shared by every shard's index.
    pub index_cache_bytes: usize,
    /// Bytes of cache values kept in memory for reads (the hot map).
    pub hot_cache_bytes_max: usize,
    /// How often retention, segment rolling and TTL sweeps run.
    pub maintenance_interval_ms: u64,
}

/// Certificates. With `dev = true` (the default) a development CA and
/// server certificate are generated under `data_dir/tls/` and reused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub dev: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Segment log settings applied to every shard this broker creates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub batch_bytes_max: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./felix-data"),
            broker_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            advertise: None,
            tls: TlsConfig::default(),
            log: LogSettings::default(),
            index_cache_bytes: 64 << 20,
            hot_cache_bytes_max: 64 << 20,
            maintenance_interval_ms: 1000,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            dev: true,
            cert: None,
            key: None,
            client_ca: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            segment_bytes: 64 << 20,
            segment_ms: 24 * 3600 * 1000,
            batch_bytes_max: 1 << 20,
        }
    }
}

impl BrokerConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<BrokerConfig, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|e| BrokerError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let c: BrokerConfig = toml::from_str(&text).map_err(|e| BrokerError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        c.check().map_err(|why| BrokerError::Config {
            path: path.to_path_buf(),
            why,
        })?;
        Ok(c)
    }

    /// Values serde cannot check.
    pub fn check(&self) -> Result<(), String> {
        if !self.tls.dev && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err("tls.cert and tls.key are both required when tls.dev = false".into());
        }
        if self.maintenance_interval_ms == 0 {
            return Err("maintenance_interval_ms must be above 0".into());
        }
        if self.log.segment_bytes < (self.log.batch_bytes_max as u64) * 2 {
            return Err(format!(
                "log.segment_bytes ({}) must be at least twice log.batch_bytes_max ({})",
                self.log.segment_bytes, self.log.batch_bytes_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults_and_unknown_keys_are_named() {
        let c: BrokerConfig = toml::from_str("").unwrap();
        assert_eq!(c.broker_id, 1);
        assert!(c.check().is_ok());
        let e = toml::from_str::<BrokerConfig>("listen = \"127.0.0.1:0\"\nsegmnet_bytes = 5").unwrap_err();
        assert!(e.to_string().contains("segmnet_bytes"), "{e}");
        let c: BrokerConfig = toml::from_str("[tls]\ndev = false\n").unwrap();
        assert!(c.check().unwrap_err().contains("tls.cert"));
    }
}
