//! Codecs turn values into bytes and back.
//!
//! A cache stores values with one [`CodecKind`] (the `codec` URL parameter): postcard, a
//! compact binary serde format, by default, or JSON. Each value is checked at fill time: a
//! type that postcard cannot carry faithfully (serde attributes that need a self-describing
//! format, such as `flatten`, `untagged` or `skip_serializing_if`, or `serde_json::Value`
//! fields) is stored as JSON instead, so no type ever fails to cache because of the codec.
//! The codec's id is part of every query key, so switching codecs never reads bytes written by
//! another one; every payload also starts with a tag naming its format, so a manual or
//! per-object entry written under another codec fails to decode and is served as a miss,
//! never misread.

use std::collections::HashSet;
use std::sync::Mutex;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

mod postcard_de;

/// A serialization format for cached values.
pub trait Codec: Send + Sync + 'static {
    /// Stable identifier, part of every key written with this codec.
    const ID: &'static str;
    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// JSON via serde_json: portable, debuggable, self-describing.
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

/// [postcard](https://docs.rs/postcard): a compact binary serde format with a stable, specified
/// wire format (varint integers, length-prefixed strings, no field names). Decoding a 100-row
/// result is about ten times faster than JSON and the bytes are a fraction of the size. It is
/// not self-describing: decoding must use the type that encoded, which the key guarantees.
///
/// Encoding is postcard's own (`postcard::to_allocvec`), so the stored bytes are postcard's.
/// Decoding uses this crate's own reader of postcard 1.x's wire format, which accepts what
/// postcard (1.2) accepts and yields the same values, only faster (varints without a loop, a
/// one-pointer error type); a `char` must hold exactly one char, as postcard 1.2 requires.
/// Trailing bytes are an error.
///
/// ```
/// use caching_core::codec::{Codec, PostcardCodec};
/// let bytes = PostcardCodec::encode(&(7u32, "seven")).unwrap();
/// let back: (u32, String) = PostcardCodec::decode(&bytes).unwrap();
/// assert_eq!(back, (7, "seven".to_string()));
/// assert!(PostcardCodec::decode::<(u32, String)>(&[7, 9]).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PostcardCodec;

impl Codec for PostcardCodec {
    const ID: &'static str = "postcard1";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| Error::Codec(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        postcard_de::from_bytes_exact(bytes).map_err(Error::Codec)
    }
}

/// Which codec a cache stores values with (URL parameter `codec`: `postcard` or `json`).
///
/// ```
/// use caching_core::codec::CodecKind;
/// let rows = vec![(1, "a".to_string()), (2, "b".to_string())];
/// for codec in [CodecKind::Postcard, CodecKind::Json] {
///     let bytes = codec.encode(&rows).unwrap();
///     let back: Vec<(i32, String)> = codec.decode(&bytes).unwrap();
///     assert_eq!(back, rows);
/// }
/// // A type postcard cannot carry is stored as JSON, and still reads back.
/// let v = serde_json::json!({"any": ["shape", 1]});
/// let bytes = CodecKind::Postcard.encode(&v).unwrap();
/// assert_eq!(CodecKind::Postcard.decode::<serde_json::Value>(&bytes).unwrap(), v);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecKind {
    /// [`PostcardCodec`], falling back to JSON per value for types it cannot carry. The
    /// default.
    #[default]
    Postcard,
    /// [`JsonCodec`] for every value (readable with any memcached client).
    Json,
}

/// Tag of a postcard payload (the first byte of a value stored under [`CodecKind::Postcard`]).
const TAG_POSTCARD: u8 = 0xB1;
/// Tag of a JSON payload stored under [`CodecKind::Postcard`] (a type postcard cannot carry).
const TAG_JSON: u8 = 0xB0;

impl CodecKind {
    /// The codec's id, part of every query key.
    pub fn id(self) -> &'static str {
        match self {
            CodecKind::Postcard => PostcardCodec::ID,
            CodecKind::Json => JsonCodec::ID,
        }
    }

    /// The codec named `name` (`postcard` or `json`).
    pub fn from_name(name: &str) -> Option<CodecKind> {
        match name {
            "postcard" => Some(CodecKind::Postcard),
            "json" => Some(CodecKind::Json),
            _ => None,
        }
    }

    /// Encodes a value. Under `Postcard`, the value is decoded and encoded again to check
    /// that postcard carries it faithfully (a few microseconds for a 100-row result); if not,
    /// it is stored as JSON (said once per type at `info`).
    pub fn encode<T: Serialize + DeserializeOwned>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            CodecKind::Json => JsonCodec::encode(value),
            CodecKind::Postcard => {
                let mut out = vec![TAG_POSTCARD];
                if let Ok(out2) = postcard::to_extend(value, out) {
                    out = out2;
                    if round_trips::<T>(&out[1..]) {
                        return Ok(out);
                    }
                }
                note_json_fallback::<T>();
                let mut out = vec![TAG_JSON];
                serde_json::to_writer(&mut out, value).map_err(|e| Error::Codec(e.to_string()))?;
                Ok(out)
            }
        }
    }

    /// Decodes a value encoded by [`encode`](CodecKind::encode) with the same codec; anything
    /// else is an [`Error::Codec`].
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            CodecKind::Json => JsonCodec::decode(bytes),
            CodecKind::Postcard => match bytes.split_first() {
                Some((&TAG_POSTCARD, rest)) => PostcardCodec::decode(rest),
                Some((&TAG_JSON, rest)) => JsonCodec::decode(rest),
                _ => Err(Error::Codec("not a payload of the postcard codec".into())),
            },
        }
    }
}

/// Whether postcard bytes decode to a value that encodes to the same bytes.
fn round_trips<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> bool {
    PostcardCodec::decode::<T>(bytes)
        .ok()
        .and_then(|back| postcard::to_allocvec(&back).ok())
        .is_some_and(|again| again == bytes)
}

fn note_json_fallback<T>() {
    static SAID: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let name = std::any::type_name::<T>();
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.get_or_insert_with(HashSet::new).insert(name) {
        tracing::info!(
            r#type = name,
            "values of this type do not round-trip through postcard; they are cached as JSON"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Skips {
        #[serde(skip_serializing_if = "Option::is_none")]
        a: Option<u8>,
        b: u8,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        x: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Flat {
        #[serde(flatten)]
        inner: Inner,
        y: String,
    }

    #[test]
    fn types_postcard_cannot_carry_fall_back_to_json() {
        let c = CodecKind::Postcard;
        for v in [
            Skips { a: None, b: 0 },
            Skips { a: None, b: 1 },
            Skips { a: Some(3), b: 4 },
        ] {
            let bytes = c.encode(&v).unwrap();
            assert_eq!(c.decode::<Skips>(&bytes).unwrap(), v);
        }
        let f = Flat {
            inner: Inner { x: 5 },
            y: "y".into(),
        };
        let bytes = c.encode(&f).unwrap();
        assert_eq!(bytes[0], TAG_JSON);
        assert_eq!(c.decode::<Flat>(&bytes).unwrap(), f);
    }

    #[test]
    fn plain_rows_use_postcard_and_are_small() {
        let rows: Vec<(i32, i32, Option<String>)> = (0..100)
            .map(|i| (i, i * 7, Some(format!("r{i}"))))
            .collect();
        let p = CodecKind::Postcard.encode(&rows).unwrap();
        let j = CodecKind::Json.encode(&rows).unwrap();
        assert_eq!(p[0], TAG_POSTCARD);
        assert!(p.len() < j.len(), "{} vs {}", p.len(), j.len());
        assert_eq!(
            CodecKind::Postcard
                .decode::<Vec<(i32, i32, Option<String>)>>(&p)
                .unwrap(),
            rows
        );
    }

    #[test]
    fn bytes_of_another_codec_never_decode() {
        let json = CodecKind::Json.encode(&vec![1u8, 2]).unwrap();
        assert!(CodecKind::Postcard.decode::<Vec<u8>>(&json).is_err());
        let pc = CodecKind::Postcard.encode(&vec![1u8, 2]).unwrap();
        assert!(CodecKind::Json.decode::<Vec<u8>>(&pc).is_err());
        assert!(CodecKind::Postcard.decode::<Vec<u8>>(&[]).is_err());
        // A truncated or extended payload is an error, not a wrong value.
        assert!(CodecKind::Postcard
            .decode::<Vec<u8>>(&pc[..pc.len() - 1])
            .is_err());
        let mut longer = pc.clone();
        longer.push(0);
        assert!(CodecKind::Postcard.decode::<Vec<u8>>(&longer).is_err());
    }
}
