//! Typed errors of the caching engine.
//!
//! Backend errors are never fatal to a query: the read path turns them into cache misses and the
//! write path retries and then reports them. Configuration errors surface once, at build time.

use std::time::Duration;

/// Result type of the caching engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from a cache backend, a codec or the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached (connect failure, or the server is marked down after a
    /// recent failure and calls fail fast until its retry time).
    #[error("cache server {server} is unavailable: {reason}")]
    Unavailable {
        /// `host:port` of the server.
        server: String,
        /// What failed.
        reason: String,
    },
    /// An I/O error (timeout, reset) talking to a server.
    #[error("I/O error talking to cache server {server}: {source}")]
    Io {
        /// `host:port` of the server.
        server: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from cache server {server}: {line:?}")]
    Protocol {
        /// `host:port` of the server.
        server: String,
        /// The offending line (truncated).
        line: String,
    },
    /// An increment found a counter that is not a decimal number (corrupted, or written by
    /// something else). The engine repairs such counters; other callers may treat it as a
    /// changed counter.
    #[error("counter {key:?} holds a value that is not a number")]
    NotANumber {
        /// The counter's key.
        key: String,
    },
    /// A value is larger than the backend stores; it was not stored.
    #[error("value of {size} bytes exceeds the backend item limit of {limit} bytes")]
    TooLarge {
        /// Size of the rejected value.
        size: usize,
        /// The backend's item limit.
        limit: usize,
    },
    /// A key that is not a valid backend key (whitespace, control characters, over 250 bytes).
    /// Keys built by [`KeySpace`](crate::KeySpace) never produce it.
    #[error("invalid cache key {0:?}")]
    InvalidKey(String),
    /// Encoding or decoding a value failed.
    #[error("codec error: {0}")]
    Codec(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Error {
    /// Whether the error comes from the backend being unreachable or failing (as opposed to a
    /// value or a key the caller supplied).
    pub fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Io { .. } | Error::Protocol { .. }
        )
    }
}

/// An invalid cache configuration, reported by [`CacheBuilder::build`](crate::CacheBuilder::build)
/// and [`Cache::from_url`](crate::Cache::from_url).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL could not be parsed.
    #[error("invalid cache URL {url:?}: {reason}")]
    Url {
        /// The URL as given, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A scheme this build does not support.
    #[error("unsupported cache URL scheme {0:?} (expected {schemes})", schemes = crate::config::supported_schemes())]
    Scheme(String),
    /// A backend scheme (`memcached`, `redis`) whose cargo feature is off in this build.
    #[error("cache URL scheme {scheme}:// needs the `{scheme}` cargo feature of caching-core (or of caching-diesel), which this build does not enable")]
    FeatureDisabled {
        /// The scheme, which is also the feature's name.
        scheme: String,
    },
    /// An unknown query parameter in a cache URL.
    #[error("unknown cache URL parameter {0:?}")]
    UnknownParameter(String),
    /// A parameter with a value that does not parse or is out of range.
    #[error("invalid value {value:?} for cache parameter {name}: {reason}")]
    Parameter {
        /// The parameter.
        name: &'static str,
        /// The value as given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A prefix that cannot be part of a memcached key.
    #[error("invalid cache prefix {prefix:?}: {reason}")]
    Prefix {
        /// The prefix as given.
        prefix: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A timeout out of the supported range.
    #[error("timeout {0:?} is out of range (1 second to 10 years, or forever)")]
    Timeout(Duration),
}
