//! Several servers: one that restarts (or is flushed) comes back empty while the others keep
//! their keys. An entry on a surviving server may then be registered only on flush lists the
//! restart wiped out, and a later write would find nothing to delete: a stale hit, forever.
//! (With one server, a restart loses the entries together with their lists and counters.)
//!
//! So each key space keeps a sentinel key on every server. Whenever the backend has opened a
//! connection since the last check (every server that restarted is reached through a new
//! connection, by every process), the cache reads the sentinel from each server. A server
//! without it lost its contents: the namespace version is bumped, which makes every entry of
//! the key space miss, and only then is the sentinel stored again. A process that dies
//! between the two leaves the sentinel missing, so the next check bumps again. An evicted
//! sentinel costs a needless bump, never a stale read.
//!
//! Readers check after their lookup (a lookup that saw a server come back is repeated); a
//! write's invalidation checks after its walk, before it reports success, so a write never
//! returns while a restart its walk ran into is still unnoticed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::Result;
use crate::stats::Counter;
use crate::Cache;

/// What the last check covered.
#[derive(Debug)]
pub(crate) struct ServerWatch {
    /// The backend's `connections_opened` when the last complete check started.
    checked: AtomicU64,
    running: Mutex<()>,
}

impl Default for ServerWatch {
    fn default() -> Self {
        ServerWatch {
            checked: AtomicU64::new(u64::MAX),
            running: Mutex::new(()),
        }
    }
}

impl Cache {
    /// Whether no server check is due: one server, or no connection opened since the last
    /// check (an atomic load).
    pub(crate) fn servers_checked(&self) -> bool {
        let backend = &*self.inner.backend;
        backend.server_count() < 2
            || self.inner.servers.checked.load(Ordering::Acquire) == backend.connections_opened()
    }

    /// Checks the servers' sentinels if the backend opened a connection since the last check
    /// (an atomic load otherwise; nothing at all on one server). `Ok(true)` when a server had
    /// lost its contents and the namespace was bumped.
    pub(crate) fn watch_servers(&self) -> Result<bool> {
        if self.servers_checked() {
            return Ok(false);
        }
        let backend = &*self.inner.backend;
        let servers = backend.server_count();
        let watch = &self.inner.servers;
        let _running = watch.running.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the check: a connection opened meanwhile triggers another one.
        let opened = backend.connections_opened();
        if watch.checked.load(Ordering::Acquire) == opened {
            return Ok(false);
        }
        let key = self.inner.keys.sentinel_key();
        let mut lost = Vec::new();
        for server in 0..servers {
            match backend.get_on_server(server, &key) {
                Ok(Some(_)) => {}
                Ok(None) => lost.push(server),
                // Down: when it answers again it does so on a new connection, checked then.
                Err(e) => self.record_backend_error("server check", &e),
            }
        }
        if !lost.is_empty() {
            tracing::warn!(
                servers = ?lost,
                "a cache server lost its contents (restarted, flushed, or new): invalidating every cached entry of this key space"
            );
            // Bump first: if it fails, the sentinels stay missing and the next check retries.
            self.bump_namespace()?;
            self.inner
                .stats
                .add(Counter::LostServers, lost.len() as u64);
            for server in &lost {
                if let Err(e) = backend.set_on_server(*server, &key, b"1") {
                    self.record_backend_error("server check", &e);
                }
            }
        }
        watch.checked.store(opened, Ordering::Release);
        Ok(!lost.is_empty())
    }
}
