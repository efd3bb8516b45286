//! What the network backends share about a server's health: the fail-fast window (a server
//! that failed is not tried again for `retry_after`, so a dead server costs one timeout, not
//! one per call) and poison-tolerant locks.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Locks `m`, going on with the data when another thread panicked holding it (every state
/// kept under these locks stays valid between statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A server's fail-fast window: until when calls to it fail at once.
#[derive(Debug, Default)]
pub(crate) struct DownMark(Mutex<Option<Instant>>);

impl DownMark {
    /// `Err(Unavailable)` while the window of `server` is open.
    pub(crate) fn refuse(&self, server: &str) -> Result<()> {
        if lock(&self.0).is_some_and(|until| Instant::now() < until) {
            return Err(Error::Unavailable {
                server: server.to_string(),
                reason: "marked down after a recent failure".into(),
            });
        }
        Ok(())
    }

    /// Opens the window for `retry_after` from now.
    pub(crate) fn mark(&self, retry_after: Duration) {
        *lock(&self.0) = Some(Instant::now() + retry_after);
    }

    /// Closes the window (the server answered).
    pub(crate) fn clear(&self) {
        *lock(&self.0) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_refuses_until_it_is_over_or_cleared() {
        let down = DownMark::default();
        assert!(down.refuse("s").is_ok());
        down.mark(Duration::from_secs(60));
        assert!(matches!(down.refuse("s"), Err(Error::Unavailable { .. })));
        down.clear();
        assert!(down.refuse("s").is_ok());
        down.mark(Duration::ZERO);
        assert!(down.refuse("s").is_ok());
    }
}
