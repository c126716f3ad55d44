//! The process's Prometheus recorder: one per process, because `felix dev`
//! runs a broker and a control plane side by side and both report through
//! it. Apart from the server so that a broker can install it alone.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 100 µs to 10 s.
pub const BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use (`None` if some other
/// recorder was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let h = PrometheusBuilder::new()
                .set_buckets(&BUCKETS_S)
                .ok()?
                .install_recorder()
                .ok()?;
            // Histograms' buckets are drained only by upkeep.
            let u = h.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    u.run_upkeep();
                })
                .ok()?;
            Some(h)
        })
        .as_ref()
}
