//! Progress on stderr for long client operations (bulk publish, replay to
//! a file). Drawn only when stderr is a terminal, so scripts and pipes see
//! nothing of it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` units (bytes when `bytes`), or a counter when the total
/// is unknown.
pub fn bar(len: Option<u64>, bytes: bool, what: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = match (len.is_some(), bytes) {
        (true, true) => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        (true, false) => "{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        (false, _) => "{msg} {spinner} {pos} {per_sec}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}
