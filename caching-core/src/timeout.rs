//! Timeouts: forever, a duration, or "whatever the cache is configured with".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::ConfigError;

/// The longest finite timeout accepted: ten years.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// memcached reads an expiry above 30 days as an absolute unix time.
pub const MEMCACHED_RELATIVE_LIMIT: u64 = 30 * 24 * 3600;

/// memcached parses `exptime` as a signed 32-bit number: an absolute time past it (January
/// 2038) wraps negative, and the item is expired on arrival.
const MEMCACHED_MAX_EXPTIME: u64 = i32::MAX as u64;

/// How long a value may live, as requested by a caller.
///
/// ```
/// use caching_core::Timeout;
/// use std::time::Duration;
/// let t = Timeout::from(Duration::from_secs(60));
/// assert_eq!(t, Timeout::After(Duration::from_secs(60)));
/// assert_eq!(Timeout::default(), Timeout::Default);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Timeout {
    /// The cache's configured default timeout (itself forever unless configured).
    #[default]
    Default,
    /// No expiry (memcached exptime 0), still capped by a configured maximum timeout.
    Forever,
    /// Expire after this duration (rounded up to whole seconds, at least one second).
    After(Duration),
}

impl From<Duration> for Timeout {
    fn from(d: Duration) -> Self {
        Timeout::After(d)
    }
}

impl Timeout {
    /// Checks that a finite timeout is between one second and [`MAX_TIMEOUT`].
    pub fn validate(self) -> Result<Self, ConfigError> {
        match self {
            Timeout::After(d) if d.is_zero() || d > MAX_TIMEOUT => Err(ConfigError::Timeout(d)),
            t => Ok(t),
        }
    }
}

/// A resolved expiry as handed to a backend: never "default".
///
/// ```
/// use caching_core::Expiry;
/// assert_eq!(Expiry::Seconds(10).memcached_exptime(), 10);
/// assert_eq!(Expiry::Forever.memcached_exptime(), 0);
/// // Over 30 days becomes an absolute unix time, as memcached requires.
/// assert!(Expiry::Seconds(40 * 24 * 3600).memcached_exptime() > 1_600_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// No expiry.
    Forever,
    /// Seconds from now, at least 1.
    Seconds(u64),
}

impl Expiry {
    /// Expiry of a duration: rounded up to whole seconds, at least one second (a zero would
    /// mean "forever" to memcached).
    pub fn from_duration(d: Duration) -> Self {
        let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
        Expiry::Seconds(secs.max(1))
    }

    /// The `exptime` field of a memcached storage command.
    pub fn memcached_exptime(self) -> u64 {
        match self {
            Expiry::Forever => 0,
            Expiry::Seconds(s) if s <= MEMCACHED_RELATIVE_LIMIT => s,
            Expiry::Seconds(s) => unix_now()
                .saturating_add(s.min(MAX_TIMEOUT.as_secs()))
                .min(MEMCACHED_MAX_EXPTIME),
        }
    }

    /// The earlier of two expiries.
    pub fn min(self, other: Expiry) -> Expiry {
        match (self, other) {
            (Expiry::Forever, e) | (e, Expiry::Forever) => e,
            (Expiry::Seconds(a), Expiry::Seconds(b)) => Expiry::Seconds(a.min(b)),
        }
    }

    /// The expiry as a duration, `None` for forever.
    pub fn as_duration(self) -> Option<Duration> {
        match self {
            Expiry::Forever => None,
            Expiry::Seconds(s) => Some(Duration::from_secs(s)),
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
