//! Step hooks: the engine names each protocol step before it runs it, so an interleaving
//! test can pause a reader or a writer between any two steps. Installed only with the
//! `test-hooks` feature; without it the calls compile to nothing but a branch on `None`.
//!
//! With `test-hooks`, the step-by-step plumbing of the read path ([`Cache::lookup`],
//! [`Cache::fill`]) is public too, so suites can drive a fill without a database. Production
//! code uses [`Cache::read_through`], which runs the same steps in order.

use std::sync::Arc;

#[cfg(feature = "test-hooks")]
use crate::{
    error::Result,
    flush::Registrations,
    read::{FillOutcome, FillToken, Lookup},
    timeout::Expiry,
};
use crate::{flush::WalkHooks, Cache};

/// Receives the name of each protocol step as it is about to run (test hooks: lets an
/// interleaving test pause a reader or writer between steps).
pub trait StepHook: Send + Sync + 'static {
    /// Called before step `name`: the engine's `lookup`, `read` (a miss reads the
    /// database), `add`, `register`, `check`, `publish`, `bump`, `read_lists`, `delete`,
    /// `clear`, and the adapter's `write` (a write helper runs its statement).
    fn step(&self, name: &'static str);
}

pub(crate) struct HookRef<'a>(pub(crate) &'a Option<Arc<dyn StepHook>>);

impl WalkHooks for HookRef<'_> {
    fn step(&self, name: &'static str) {
        if let Some(h) = self.0 {
            h.step(name);
        }
    }
}

impl Cache {
    pub(crate) fn step(&self, name: &'static str) {
        if let Some(h) = &self.inner.hook {
            h.step(name);
        }
    }
}

#[cfg(feature = "test-hooks")]
impl Cache {
    /// A copy of this cache that reports its protocol steps to `hook` (shares the backend;
    /// stats and the queue of undelivered invalidations start empty). For interleaving tests.
    pub fn with_step_hook(&self, hook: Arc<dyn StepHook>) -> Cache {
        Cache::assemble(
            self.inner.backend.clone(),
            self.inner.config.clone(),
            self.inner.keys.clone(),
            Some(hook),
        )
    }

    /// Reports a step taken outside the engine (the adapter's `write`) to the step hook.
    pub fn hook_step(&self, name: &'static str) {
        self.step(name);
    }

    /// Step 1 of the read path: one round trip for the entry `key` and the versions and
    /// write generations of `tables`.
    pub fn lookup(&self, key: &str, tables: &[&str]) -> Result<Lookup> {
        self.lookup_inner(key, tables, &[])
    }

    /// [`lookup`](Cache::lookup) recording the write generations of `guarded` too.
    pub fn lookup_guarded(&self, key: &str, tables: &[&str], guarded: &[&str]) -> Result<Lookup> {
        self.lookup_inner(key, tables, guarded)
    }

    /// Steps 3-6 of the read path after a miss: marker, registration, check, publish.
    pub fn fill(
        &self,
        token: &FillToken,
        payload: &[u8],
        regs: &Registrations,
        expiry: Expiry,
    ) -> Result<FillOutcome> {
        self.fill_counted(token, payload, regs, expiry)
    }
}
