//! Waiting for something to happen: poll a condition until a generous
//! deadline. The deadline only turns a hang into a failure; it is never
//! the verdict, so it is set far above what the condition takes on a busy
//! machine.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// Polls `f` until it gives a value; panics naming `what` after `secs`.
pub fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`until`] for an async condition, on the test's runtime.
pub async fn until_async<T, F, Fut>(secs: u64, what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_the_first_value() {
        let mut n = 0;
        assert_eq!(
            until(5, "n reaches 3", || {
                n += 1;
                (n == 3).then_some(n)
            }),
            3
        );
    }

    #[test]
    #[should_panic(expected = "never: not within 0 s")]
    fn until_names_what_did_not_happen() {
        until(0, "never", || None::<()>);
    }
}
