//! The engine of Cache Machine for Diesel: keys, backends, flush lists, invalidation and
//! manual caching. It knows nothing of Diesel; `caching-diesel` builds the query cache on it.
//!
//! ```
//! use caching_core::{Cache, Invalidation, ObjectKey, Timeout};
//!
//! let cache = Cache::from_url("locmem://?prefix=demo").unwrap();
//! let user = ObjectKey::new("users", &["1"]);
//! // A value tied to a row: computed once, served from the cache until the row changes.
//! let name: String = cache.cached_with(&user, "display-name", Timeout::Forever, || "fliggy".into());
//! assert_eq!(name, "fliggy");
//! let mut inv = Invalidation::new();
//! inv.object(user.clone());
//! cache.invalidate(&inv).unwrap();
//! assert_eq!(cache.stats().invalidations, 1);
//! ```

pub mod backend;
mod cache;
mod clock;
pub mod codec;
pub mod config;
mod delivery;
mod envelope;
mod error;
mod flush;
mod guards;
mod hooks;
mod invalidate;
mod io;
pub mod key;
mod lease;
mod predicate;
mod read;
mod servers;
mod stats;
mod stripe;
mod timeout;

pub use backend::{AppendOutcome, Backend, CasOutcome, Item, Op, OpReply, Placeholder};
pub use cache::Cache;
pub use config::{
    CacheBuilder, CacheConfig, DependencyTracking, InvalidateOnCreate, DEFAULT_MEMCACHED_PORT,
    DEFAULT_REDIS_PORT,
};
pub use error::{ConfigError, Error, Result};
pub use flush::{InvalidationReport, Registrations};
pub use hooks::StepHook;
pub use invalidate::Invalidation;
pub use key::{KeySpace, ObjectKey, QueryKeyBuilder};
pub use predicate::PredicateValue;
pub use read::{
    FillOutcome, FillToken, FlushTarget, Guarded, Lookup, PendingFill, PreparedFill, ReadOutcome,
    ReadPlan, ReadStart,
};
pub use stats::{Stats, StatsSnapshot, TableStats};
pub use timeout::{Expiry, Timeout, MAX_TIMEOUT};
