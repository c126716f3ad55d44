//! The process's log output: levels from `log_level` or `$FELIX_LOG`
//! (changeable while running, for SIGHUP), text or JSON lines on stderr,
//! each place in the code held to a few lines a second (`limit`).

pub mod limit;

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

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
    let limited = Limited::default();
    let report = limited.limiter.clone();
    tracing_subscriber::registry()
        .with(filter)
        .with(limited)
        .with(text_layer)
        .with(json_layer)
        .init();
    let _ = LEVELS.set(handle);
    // One thread for the process: it reports what was held back.
    let _ = std::thread::Builder::new()
        .name("felix-log-report".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(limit::SUPPRESSED_REPORT_MS));
            let held = report.lock().unwrap_or_else(|e| e.into_inner()).take_suppressed();
            if held.is_empty() {
                continue;
            }
            // One line for every place, so the report is never held back.
            let places: Vec<String> = held
                .iter()
                .map(|((target, line), n)| format!("{target}:{line}={n}"))
                .collect();
            tracing::warn!(
                places = places.join(" "),
                per_second_max = limit::LINES_PER_SECOND_MAX,
                "log lines held back (place=lines): these places logged more than their share"
            );
        });
}

/// The layer that holds back a place's lines past its share (`limit`).
struct Limited {
    limiter: std::sync::Arc<Mutex<limit::Limiter>>,
    started: Instant,
}

impl Default for Limited {
    fn default() -> Self {
        Limited {
            limiter: std::sync::Arc::default(),
            started: Instant::now(),
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Limited {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let m = event.metadata();
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.limiter.lock().expect("log limiter lock").admit(
            m.callsite(),
            (m.target(), m.line().unwrap_or(0)),
            now_ms,
        )
    }
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
