//! Codecs turn values into bytes and back. JSON (serde_json) is the default.
//!
//! A codec's [`Codec::ID`] is part of every query key, so switching codecs never reads bytes
//! written by another one. A payload that fails to decode is treated by callers as a miss.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// A serialization format for cached values.
pub trait Codec: Send + Sync + 'static {
    /// Stable identifier, part of every key written with this codec.
    const ID: &'static str;
    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// JSON via serde_json: portable, debuggable, the default.
///
/// ```
/// use caching_core::codec::{Codec, JsonCodec};
/// let bytes = JsonCodec::encode(&vec![1, 2, 3]).unwrap();
/// let back: Vec<i32> = JsonCodec::decode(&bytes).unwrap();
/// assert_eq!(back, vec![1, 2, 3]);
/// assert!(JsonCodec::decode::<Vec<i32>>(b"garbage").is_err());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    const ID: &'static str = "json1";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::Codec(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| Error::Codec(e.to_string()))
    }
}
