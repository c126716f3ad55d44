//! The process's log output: levels from `log_level` or `$FELIX_LOG`
//! (changeable while running, for SIGHUP), text or JSON lines on stderr.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static LEVELS: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn from_env() -> EnvFilter {
    EnvFilter::try_from_env("FELIX_LOG").unwrap_or_else(|_| EnvFilter::new("warn"))
}

/// Installs the subscriber. `FELIX_LOG_FORMAT=json`: one JSON object per
/// line, for log shippers.
pub fn init() {
    let (filter, handle) = reload::Layer::new(from_env());
    let json = std::env::var("FELIX_LOG_FORMAT").is_ok_and(|f| f == "json");
    let text_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .init();
    let _ = LEVELS.set(handle);
}

/// Sets the levels (`None`: back to `$FELIX_LOG`, else `warn`). The value
/// was checked with the configuration, so a failure here is only logged.
pub fn set_level(levels: Option<&str>) {
    let Some(h) = LEVELS.get() else { return };
    let filter = match levels {
        Some(l) => match EnvFilter::try_new(l) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(levels = l, error = %e, "log levels refused");
                return;
            }
        },
        None => from_env(),
    };
    if let Err(e) = h.reload(filter) {
        tracing::error!(error = %e, "log levels could not be changed");
    }
}
