//! The crate's own reader of [postcard]'s 1.x wire format: a serde `Deserializer` over a byte
//! slice, used by [`PostcardCodec::decode`](super::PostcardCodec). Encoding stays postcard's.
//!
//! It accepts what `postcard::take_from_bytes` (postcard 1.2) accepts, rejects what it rejects
//! and yields the same values; the tests check that against the postcard this crate depends
//! on. It is faster than postcard's reader (about a third for rows of small integers, a few
//! per cent for string-heavy rows, whose time goes mostly to allocating the strings) because:
//!
//! * a varint of one or two bytes (most integers and lengths) is read without a loop, and a
//!   longer one of up to 8 bytes with a few shifts and masks on one 8-byte word;
//! * the cursor is an index into the input (one store per read, not a pointer and a length);
//! * its error is one pointer wide (the details are boxed, only on the error path), so every
//!   `Result` the serde glue moves around stays small;
//! * a short string is copied before its UTF-8 is checked, so the check starts at an aligned
//!   address and runs word-wise rather than byte by byte.
//!
//! The format (postcard's spec, "The Postcard Wire Format"):
//!
//! * `bool`: one byte, `0` or `1`; `i8`/`u8`: one byte as is.
//! * `u16`..`u128` (and lengths, as `usize`): LEB128 varints, least significant group first,
//!   at most `ceil(bits / 7)` bytes, the last of which must not carry bits past the type's
//!   width. Non-canonical forms (`[0x80, 0x00]` for 0) are accepted, as by postcard.
//! * `i16`..`i128`: the zigzag form of the value as the unsigned varint of the same width.
//! * `f32`/`f64`: the IEEE bits, little-endian, 4 or 8 bytes.
//! * `char`: a string holding exactly one char (length at most 4).
//! * `str`/`bytes`: a varint length and that many bytes (UTF-8 checked for strings).
//! * `option`: a tag byte, `0` (none) or `1` (some, then the value).
//! * unit, unit struct: nothing; newtype struct: its content.
//! * `seq`, `map`: a varint count, then the elements (a map's as key, value pairs).
//! * tuple, tuple struct, struct: the fields in order, no count, no names.
//! * enum: the variant's index as a `varint(u32)`, then the variant's content as above.
//!
//! Like postcard, it is not self-describing: `deserialize_any`, `deserialize_ignored_any` and
//! `deserialize_identifier` are errors (variant indices reach the enum's identifier visitor as
//! a `u32`, never through `deserialize_identifier`).
//!
//! It never panics and never sizes an allocation by a length the input cannot back: a `seq`'s
//! or a `map`'s size hint is its declared count only if that many bytes remain (else none), and
//! serde caps the capacity it reserves from a hint in any case. (postcard gives a map's count
//! as its hint unconditionally; only the capacity differs, never the result.) Like postcard's,
//! it has no nesting limit: a recursive type nests as deep as its input says.
//!
//! [postcard]: https://docs.rs/postcard

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Decodes one `T` from the whole of `bytes`; trailing bytes are an error. The error is a
/// message for [`Error::Codec`](crate::error::Error::Codec).
#[inline]
pub(super) fn from_bytes_exact<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
) -> std::result::Result<T, String> {
    let mut reader = Reader { bytes, pos: 0 };
    match T::deserialize(&mut reader) {
        Ok(value) if reader.remaining() == 0 => Ok(value),
        Ok(_) => Err(trailing_message(reader.remaining())),
        Err(e) => Err(error_message(&e, reader.pos, bytes.len())),
    }
}

#[cold]
#[inline(never)]
fn trailing_message(rest: usize) -> String {
    format!("{rest} trailing bytes after the value")
}

#[cold]
#[inline(never)]
fn error_message(e: &DeError, read: usize, total: usize) -> String {
    format!("postcard: {e} (after reading {read} of {total} bytes)")
}

/// What went wrong. Boxed in [`DeError`], so a `Result` carries one pointer.
#[derive(Debug)]
enum Kind {
    UnexpectedEnd,
    /// The width in bits of the varint's type.
    BadVarint(u32),
    BadBool(u8),
    BadOption(u8),
    BadChar,
    BadUtf8,
    Unsupported(&'static str),
    Custom(String),
}

/// The reader's error: one pointer wide.
#[derive(Debug)]
pub(super) struct DeError(Box<Kind>);

impl DeError {
    #[cold]
    #[inline(never)]
    fn new(kind: Kind) -> DeError {
        DeError(Box::new(kind))
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Kind::UnexpectedEnd => f.write_str("unexpected end of input"),
            Kind::BadVarint(bits) => write!(
                f,
                "bad varint(u{bits}): longer than the type allows or out of its range"
            ),
            Kind::BadBool(b) => write!(f, "bad bool byte {b:#04x} (expected 0 or 1)"),
            Kind::BadOption(b) => write!(f, "bad option tag {b:#04x} (expected 0 or 1)"),
            Kind::BadChar => f.write_str("bad char (expected the UTF-8 of exactly one char)"),
            Kind::BadUtf8 => f.write_str("string is not valid UTF-8"),
            Kind::Unsupported(what) => write!(
                f,
                "{what} is not supported (postcard is not self-describing)"
            ),
            Kind::Custom(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    #[cold]
    fn custom<M: fmt::Display>(msg: M) -> Self {
        DeError::new(Kind::Custom(msg.to_string()))
    }
}

type Result<T> = std::result::Result<T, DeError>;

/// The number of bytes of the longest varint of a `bits`-bit integer.
const fn varint_max(bits: u32) -> usize {
    bits.div_ceil(7) as usize
}

/// The largest last byte of a varint of maximal length for a `bits`-bit integer (no bits past
/// the type's width; a multiple of 7 would allow all of `0..0x80`, which no width here is).
const fn last_byte_max(bits: u32) -> u8 {
    (1u8 << (bits % 7)) - 1
}

/// Strings up to this length are copied before their UTF-8 is checked (see
/// `deserialize_string`); longer ones are checked in place.
const SHORT_STRING: usize = 64;

/// The cursor: `bytes[pos..]` is not read yet.
struct Reader<'de> {
    bytes: &'de [u8],
    pos: usize,
}

impl<'de> Reader<'de> {
    /// The number of bytes not read yet.
    #[inline(always)]
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    #[inline(always)]
    fn pop(&mut self) -> Result<u8> {
        match self.bytes.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(DeError::new(Kind::UnexpectedEnd)),
        }
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(head) => {
                self.pos += n;
                Ok(head)
            }
            None => Err(DeError::new(Kind::UnexpectedEnd)),
        }
    }

    #[inline(always)]
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let head = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    /// A varint of a `BITS`-bit unsigned integer (16, 32 or 64), as postcard reads it: at most
    /// `varint_max(BITS)` bytes, the last of which (if the varint has that many) at most
    /// `last_byte_max(BITS)`. The result fits in `BITS` bits.
    #[inline(always)]
    fn varint<const BITS: u32>(&mut self) -> Result<u64> {
        // Fast paths: one byte, or two (no width here has a maximal length of 2, so the second
        // byte needs no range check).
        let p = self.pos;
        if let Some(&b0) = self.bytes.get(p) {
            if b0 < 0x80 {
                self.pos = p + 1;
                return Ok(u64::from(b0));
            }
            if let Some(&b1) = self.bytes.get(p + 1) {
                if b1 < 0x80 {
                    self.pos = p + 2;
                    return Ok(u64::from(b0 & 0x7F) | (u64::from(b1) << 7));
                }
            }
        }
        self.varint_slow::<BITS>()
    }

    #[inline(never)]
    fn varint_slow<const BITS: u32>(&mut self) -> Result<u64> {
        let max = varint_max(BITS);
        // With 8 bytes to look at (the common case), a varint of up to 8 bytes is decoded
        // without a loop: the first byte without the continuation bit ends it, and the 7-bit
        // groups before it are packed together with shifts and masks.
        if let Some(chunk) = self
            .bytes
            .get(self.pos..)
            .and_then(<[u8]>::first_chunk::<8>)
        {
            let word = u64::from_le_bytes(*chunk);
            let ends = !word & 0x8080_8080_8080_8080;
            if ends != 0 {
                let len = ends.trailing_zeros() / 8 + 1;
                // The groups of the `len` bytes (`len` is 1..=8: shift by 0..=56 bits).
                let x = (word & 0x7F7F_7F7F_7F7F_7F7F) & (u64::MAX >> (64 - 8 * len));
                let x = (x & 0x007F_007F_007F_007F) | ((x & 0x7F00_7F00_7F00_7F00) >> 1);
                let x = (x & 0x0000_3FFF_0000_3FFF) | ((x & 0x3FFF_0000_3FFF_0000) >> 2);
                let x = (x & 0x0000_0000_0FFF_FFFF) | ((x & 0x0FFF_FFFF_0000_0000) >> 4);
                // At most `max` bytes, and within the type's width (which for a varint of
                // `max` bytes is postcard's check of the last byte; a shorter one always is).
                if len as usize <= max && (BITS >= 64 || x >> BITS == 0) {
                    self.pos += len as usize;
                    return Ok(x);
                }
                return Err(DeError::new(Kind::BadVarint(BITS)));
            }
        }
        // Near the end of the input: byte by byte. (In range: at most `max` bytes, the last
        // checked, which keeps a `BITS`-bit value.)
        self.varint_bytewise(BITS).map(|v| v as u64)
    }

    /// A varint of a `bits`-bit unsigned integer read byte by byte, as postcard does: at most
    /// `varint_max(bits)` bytes, the last at most `last_byte_max(bits)`.
    fn varint_bytewise(&mut self, bits: u32) -> Result<u128> {
        let max = varint_max(bits);
        let mut out = 0u128;
        for i in 0..max {
            let b = self.pop()?;
            out |= u128::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i == max - 1 && b > last_byte_max(bits) {
                    break;
                }
                return Ok(out);
            }
        }
        Err(DeError::new(Kind::BadVarint(bits)))
    }

    #[inline]
    fn varint_u16(&mut self) -> Result<u16> {
        // In range: checked by `varint::<16>`.
        self.varint::<16>().map(|v| v as u16)
    }

    #[inline]
    fn varint_u32(&mut self) -> Result<u32> {
        self.varint::<32>().map(|v| v as u32)
    }

    #[inline]
    fn varint_u64(&mut self) -> Result<u64> {
        self.varint::<64>()
    }

    /// A length or count: `varint(usize)`, whose width is the platform's (as postcard's).
    #[inline]
    fn varint_usize(&mut self) -> Result<usize> {
        self.varint::<{ usize::BITS }>().map(|v| v as usize)
    }

    #[inline(never)]
    fn varint_u128(&mut self) -> Result<u128> {
        self.varint_bytewise(128)
    }

    /// A length-prefixed run of bytes (`str`, `bytes`): `varint(usize)`, then that many bytes.
    #[inline]
    fn take_counted(&mut self) -> Result<&'de [u8]> {
        let len = self.varint_usize()?;
        self.take(len)
    }

    /// The size hint of a `seq` or `map` of `len` declared elements: `len` if at least that
    /// many bytes remain, else none (as postcard's for a seq), so no capacity is reserved for
    /// a count the input cannot back. serde caps what it reserves from a hint at 1 MiB anyway.
    #[inline]
    fn size_hint(&self, len: usize) -> Option<usize> {
        (len <= self.remaining()).then_some(len)
    }
}

/// `bytes` as a string, or the error of a string that is not UTF-8.
#[inline]
fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| DeError::new(Kind::BadUtf8))
}

#[inline(always)]
fn unzigzag_u64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[inline(always)]
fn unzigzag_u128(n: u128) -> i128 {
    ((n >> 1) as i128) ^ -((n & 1) as i128)
}

/// The elements of a `seq` (or tuple, struct) or the entries of a `map`: `len` of them.
struct Counted<'a, 'de> {
    de: &'a mut Reader<'de>,
    len: usize,
}

impl Counted<'_, '_> {
    /// Counts one more element off; `false` when there are none left.
    #[inline]
    fn next(&mut self) -> bool {
        let more = self.len > 0;
        self.len = self.len.saturating_sub(1);
        more
    }
}

impl<'de> de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = DeError;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>> {
        if !self.next() {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.de.size_hint(self.len)
    }
}

impl<'de> de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = DeError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.next() {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        // Tighter than postcard (which says `len` unconditionally): the same bound as a seq.
        self.de.size_hint(self.len)
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = DeError;

    #[inline]
    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(DeError::new(Kind::Unsupported("deserialize_any")))
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pop()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(DeError::new(Kind::BadBool(b))),
        }
    }

    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.pop()? as i8)
    }

    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.varint_u16()?;
        visitor.visit_i16(unzigzag_u64(u64::from(v)) as i16)
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.varint_u32()?;
        visitor.visit_i32(unzigzag_u64(u64::from(v)) as i32)
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.varint_u64()?;
        visitor.visit_i64(unzigzag_u64(v))
    }

    #[inline]
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let v = self.varint_u128()?;
        visitor.visit_i128(unzigzag_u128(v))
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.pop()?)
    }

    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(self.varint_u16()?)
    }

    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.varint_u32()?)
    }

    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.varint_u64()?)
    }

    #[inline]
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u128(self.varint_u128()?)
    }

    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_le_bytes(self.take_array()?))
    }

    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_le_bytes(self.take_array()?))
    }

    #[inline]
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        if len > 4 {
            return Err(DeError::new(Kind::BadChar));
        }
        let bytes = self.take(len)?;
        let mut chars = std::str::from_utf8(bytes)
            .map_err(|_| DeError::new(Kind::BadChar))?
            .chars();
        // Exactly one char, as postcard 1.2 requires (1.1 ignored any after the first).
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(DeError::new(Kind::BadChar)),
        }
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(utf8(self.take_counted()?)?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let bytes = self.take_counted()?;
        if bytes.len() <= SHORT_STRING {
            // The visitor wants an owned string: copy first, then check the copy, whose start
            // is aligned (UTF-8 validation runs word-wise from an aligned address on, so a
            // short string at an odd offset would be checked byte by byte).
            let s = String::from_utf8(bytes.to_vec()).map_err(|_| DeError::new(Kind::BadUtf8))?;
            visitor.visit_string(s)
        } else {
            visitor.visit_str(utf8(bytes)?)
        }
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_bytes(self.take_counted()?)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_bytes(self.take_counted()?)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pop()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            b => Err(DeError::new(Kind::BadOption(b))),
        }
    }

    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        visitor.visit_map(Counted { de: self, len })
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted {
            de: self,
            len: fields.len(),
        })
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(DeError::new(Kind::Unsupported("deserialize_identifier")))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(DeError::new(Kind::Unsupported("deserialize_ignored_any")))
    }
}

impl<'de> de::EnumAccess<'de> for &mut Reader<'de> {
    type Error = DeError;
    type Variant = Self;

    #[inline]
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self)> {
        let index = self.varint_u32()?;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Reader<'de> {
    type Error = DeError;

    #[inline]
    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted {
            de: self,
            len: fields.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The reader against postcard itself (the crate's postcard, 1.1 at the time of writing):
    //! equal values for every kind of type, and the same verdict (and value) on arbitrary bytes.

    use std::borrow::Cow;
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Debug;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::Duration;

    use serde::de::{DeserializeOwned, IgnoredAny};
    use serde::{Deserialize, Serialize};

    use super::from_bytes_exact;
    use crate::codec::{Codec, PostcardCodec};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: i32,
        val: i32,
        a: i32,
        b: i32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct User {
        id: i64,
        name: String,
        email: String,
        active: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Newtype(u32);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct TupleStruct(i16, u8, String);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Nested {
        user: User,
        rows: Vec<Row>,
        tag: Option<Newtype>,
        pair: (Unit, TupleStruct),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kinds {
        Unit,
        Newtype(i64),
        Tuple(u8, String, Option<bool>),
        Struct { a: u16, b: Vec<i8> },
        Nested(Box<Kinds>),
    }

    /// A byte string through `serialize_bytes` / `deserialize_byte_buf` (what `serde_bytes`
    /// does), without the dependency.
    #[derive(Debug, Clone, PartialEq)]
    struct Bytes(Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    /// A borrowed byte string through `deserialize_bytes`.
    #[derive(Debug, PartialEq, Serialize)]
    struct BorrowedBytes<'a>(&'a [u8]);

    impl<'de> Deserialize<'de> for BorrowedBytes<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = BorrowedBytes<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("borrowed bytes")
                }
                fn visit_borrowed_bytes<E: serde::de::Error>(
                    self,
                    v: &'de [u8],
                ) -> Result<Self::Value, E> {
                    Ok(BorrowedBytes(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }

    /// A type that asks for an identifier directly (postcard refuses).
    #[derive(Debug, PartialEq, Serialize)]
    struct Ident(u32);

    impl<'de> Deserialize<'de> for Ident {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Ident;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an identifier")
                }
                fn visit_u32<E: serde::de::Error>(self, v: u32) -> Result<Ident, E> {
                    Ok(Ident(v))
                }
            }
            d.deserialize_identifier(V)
        }
    }

    fn rows(n: i32) -> Vec<Row> {
        (0..n)
            .map(|i| Row {
                id: i * 5,
                val: i * 5 % 1000,
                a: 1,
                b: 101,
            })
            .collect()
    }

    fn user(i: i64) -> User {
        User {
            id: i * 7919,
            name: format!("user number {i}"),
            email: format!("user{i}@example.com"),
            active: i % 3 == 0,
        }
    }

    fn nested() -> Nested {
        Nested {
            user: user(42),
            rows: rows(3),
            tag: Some(Newtype(u32::MAX)),
            pair: (Unit, TupleStruct(-300, 200, "é".into())),
        }
    }

    fn kinds() -> Vec<Kinds> {
        vec![
            Kinds::Unit,
            Kinds::Newtype(i64::MIN),
            Kinds::Tuple(7, "seven".into(), None),
            Kinds::Tuple(8, String::new(), Some(true)),
            Kinds::Struct {
                a: 65535,
                b: vec![-128, 0, 127],
            },
            Kinds::Nested(Box::new(Kinds::Struct { a: 1, b: vec![] })),
        ]
    }

    /// Encodes `v` with postcard; our reader, postcard's and the codec must all give `v` back.
    fn same<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
        let bytes = postcard::to_allocvec(v).unwrap();
        let ours: T =
            from_bytes_exact(&bytes).unwrap_or_else(|e| panic!("{v:?} from {bytes:02x?}: {e}"));
        let theirs: T = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&ours, v, "from {bytes:02x?}");
        assert_eq!(ours, theirs, "from {bytes:02x?}");
        assert_eq!(&PostcardCodec::decode::<T>(&bytes).unwrap(), v);
    }

    macro_rules! integer_boundaries {
        ($($t:ty),*) => {$({
            let mut values: Vec<$t> = vec![0, 1, 127, <$t>::MAX, <$t>::MIN, <$t>::MAX - 1, <$t>::MIN + 1];
            // 128, 255, 256, 16383, 16384, ... where the type holds them, and their negatives.
            for v in [128i128, 255, 256, 16383, 16384, 65535, 65536, 1 << 31, 1 << 32, 1 << 63, 1 << 64] {
                values.extend(<$t>::try_from(v).ok());
                values.extend(<$t>::try_from(-v).ok());
            }
            values.extend(<$t>::try_from(-1i8).ok());
            for v in &values {
                same(v);
            }
            same(&values);
        })*};
    }

    #[test]
    fn codec_reader_integers_at_their_boundaries_match_postcard() {
        integer_boundaries!(i8, i16, i32, i64, i128, u8, u16, u32, u64, u128, usize, isize);
    }

    #[test]
    fn codec_reader_floats_keep_their_bits() {
        let f32s = [
            0.0f32,
            -0.0,
            1.5,
            -32.005_86,
            f32::MIN,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::EPSILON,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7FC0_1234),
            f32::from_bits(0xFF80_0001),
            f32::from_bits(1),
        ];
        for v in f32s {
            let bytes = postcard::to_allocvec(&v).unwrap();
            let ours: f32 = from_bytes_exact(&bytes).unwrap();
            let theirs: f32 = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(ours.to_bits(), v.to_bits());
            assert_eq!(ours.to_bits(), theirs.to_bits());
        }
        let f64s = [
            0.0f64,
            -0.0,
            1.5,
            -32.005859375,
            f64::MIN,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7FF8_0000_DEAD_BEEF),
            f64::from_bits(0xFFF0_0000_0000_0001),
            f64::from_bits(1),
        ];
        for v in f64s {
            let bytes = postcard::to_allocvec(&v).unwrap();
            let ours: f64 = from_bytes_exact(&bytes).unwrap();
            let theirs: f64 = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(ours.to_bits(), v.to_bits());
            assert_eq!(ours.to_bits(), theirs.to_bits());
        }
        same(&(1.25f32, -2.5f64));
    }

    #[test]
    fn codec_reader_zoo_matches_postcard() {
        same(&true);
        same(&false);
        for c in [
            'a',
            '\0',
            '\u{7f}',
            '\u{80}',
            'é',
            'ß',
            '€',
            '\u{ffff}',
            '😀',
            char::MAX,
        ] {
            same(&c);
        }
        same(&String::new());
        same(&"plain ascii".to_string());
        same(&"Überlänge — 😀 ".repeat(40));
        same(&Cow::<str>::Owned("cow".into()));
        same(&Box::<str>::from("boxed"));
        same(&Vec::<u8>::new());
        same(&(0..=255u8).collect::<Vec<u8>>());
        same(&vec![0u8; 300]);
        same(&Bytes(vec![]));
        same(&Bytes((0..200).collect()));
        same(&[1u8, 2, 3, 4]);
        same(&[u16::MAX; 5]);
        same(&Option::<u32>::None);
        same(&Some(7u32));
        same(&Some(None::<bool>));
        same(&Some(Some(false)));
        same(&vec![None, Some("x".to_string()), None]);
        same(&());
        same(&Unit);
        same(&vec![(); 5]);
        same(&vec![Unit, Unit]);
        same(&Newtype(0));
        same(&Newtype(300));
        same(&TupleStruct(i16::MIN, u8::MAX, "tuple".into()));
        same(&nested());
        same(&vec![nested(), nested()]);
        for k in kinds() {
            same(&k);
        }
        same(&kinds());
        let hm: HashMap<String, i32> = (0..50).map(|i| (format!("k{i}"), i * -3)).collect();
        same(&hm);
        same(&HashMap::<u8, ()>::new());
        let bm: BTreeMap<u32, Vec<String>> = (0..20)
            .map(|i| (i * 1000, (0..i).map(|j| j.to_string()).collect()))
            .collect();
        same(&bm);
        same(&BTreeMap::<String, Kinds>::new());
        same(&(1u8, -2i16, 3u32, -4i64, "five".to_string(), Some(6u128)));
        same(&((1u8, (2u16, (3u32,))), [(); 0], ((),)));
        same(&rows(100));
        same(&(0..100).map(user).collect::<Vec<_>>());
        same(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        same(&IpAddr::V6(Ipv6Addr::LOCALHOST));
        same(&SocketAddr::from(([127, 0, 0, 1], 11211)));
        same(&Duration::new(u64::MAX, 999_999_999));
        same(&std::time::UNIX_EPOCH);
        same(&std::num::NonZeroU32::new(9).unwrap());
        same(&std::path::PathBuf::from("/tmp/x"));
        same(&Ok::<u8, String>(1));
        same(&Err::<u8, String>("e".into()));
    }

    #[test]
    fn codec_reader_borrows_str_and_bytes_from_the_input() {
        let bytes = postcard::to_allocvec(&("borrowed", b"raw".as_slice())).unwrap();
        let (s, b): (&str, &[u8]) = from_bytes_exact(&bytes).unwrap();
        assert_eq!((s, b), ("borrowed", b"raw".as_slice()));
        assert_eq!(
            postcard::from_bytes::<(&str, &[u8])>(&bytes).unwrap(),
            (s, b)
        );
        let range = bytes.as_ptr_range();
        assert!(range.contains(&s.as_ptr()) && range.contains(&b.as_ptr()));

        let bytes = postcard::to_allocvec(&BorrowedBytes(&[9, 8, 7])).unwrap();
        let bb: BorrowedBytes<'_> = from_bytes_exact(&bytes).unwrap();
        assert_eq!(bb, BorrowedBytes(&[9, 8, 7]));
        assert!(bytes.as_ptr_range().contains(&bb.0.as_ptr()));
        assert_eq!(
            postcard::from_bytes::<BorrowedBytes<'_>>(&bytes).unwrap(),
            bb
        );

        #[derive(Debug, PartialEq, Deserialize)]
        struct Row<'a> {
            id: u8,
            #[serde(borrow)]
            name: Cow<'a, str>,
        }
        let bytes = postcard::to_allocvec(&(3u8, "cow")).unwrap();
        let row: Row<'_> = from_bytes_exact(&bytes).unwrap();
        assert_eq!(row.id, 3);
        assert!(matches!(row.name, Cow::Borrowed("cow")));
    }

    #[test]
    fn codec_reader_is_not_self_describing() {
        for bytes in [&[][..], &[0], &[1, 0], &[5, 1, 2, 3, 4, 5]] {
            assert!(from_bytes_exact::<serde_json::Value>(bytes).is_err());
            assert!(postcard::from_bytes::<serde_json::Value>(bytes).is_err());
            assert!(from_bytes_exact::<IgnoredAny>(bytes).is_err());
            assert!(postcard::from_bytes::<IgnoredAny>(bytes).is_err());
            assert!(from_bytes_exact::<Ident>(bytes).is_err());
            assert!(postcard::from_bytes::<Ident>(bytes).is_err());
        }
        let e = from_bytes_exact::<serde_json::Value>(&[0]).unwrap_err();
        assert!(e.contains("not self-describing"), "{e}");
    }

    #[test]
    fn codec_reader_errors_say_what_and_where() {
        let e = from_bytes_exact::<Vec<u8>>(&[3, 1]).unwrap_err();
        assert!(e.contains("unexpected end of input"), "{e}");
        assert!(e.contains("after reading 2 of 2 bytes"), "{e}");
        let e = from_bytes_exact::<(u8, bool)>(&[0, 2]).unwrap_err();
        assert!(e.contains("bad bool byte 0x02"), "{e}");
        let e = from_bytes_exact::<Option<u8>>(&[2]).unwrap_err();
        assert!(e.contains("bad option tag 0x02"), "{e}");
        let e = from_bytes_exact::<u16>(&[0xFF, 0xFF, 0x04]).unwrap_err();
        assert!(e.contains("bad varint(u16)"), "{e}");
        let e = from_bytes_exact::<String>(&[2, 0xC3, 0x28]).unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
        let e = from_bytes_exact::<Kinds>(&[9]).unwrap_err();
        assert!(e.contains("variant index"), "{e}");
        let e = from_bytes_exact::<u8>(&[1, 2]).unwrap_err();
        assert_eq!(e, "1 trailing bytes after the value");
        let e = PostcardCodec::decode::<u8>(&[]).unwrap_err();
        assert!(e.to_string().contains("unexpected end of input"), "{e}");
    }

    #[test]
    fn codec_reader_size_hints_never_exceed_the_input() {
        struct Probe;
        impl<'de> serde::de::Visitor<'de> for Probe {
            type Value = Option<usize>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> Result<Self::Value, A::Error> {
                Ok(a.size_hint())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<Self::Value, A::Error> {
                Ok(a.size_hint())
            }
        }
        let hint = |bytes: &[u8], map: bool| {
            let mut r = super::Reader { bytes, pos: 0 };
            if map {
                serde::Deserializer::deserialize_map(&mut r, Probe).unwrap()
            } else {
                serde::Deserializer::deserialize_seq(&mut r, Probe).unwrap()
            }
        };
        for map in [false, true] {
            assert_eq!(hint(&[3, 1, 2, 3], map), Some(3));
            assert_eq!(hint(&[0], map), Some(0));
            assert_eq!(hint(&[4, 1, 2, 3], map), None);
            assert_eq!(
                hint(
                    &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
                    map
                ),
                None
            );
        }
        // Huge declared lengths fail on the missing bytes, reserving nothing for them.
        let huge = [
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0,
        ];
        let half = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0];
        for bytes in [&huge[..], &half[..], &huge[..10], &half[..9]] {
            assert!(from_bytes_exact::<Vec<u64>>(bytes).is_err());
            assert!(from_bytes_exact::<Vec<String>>(bytes).is_err());
            assert!(from_bytes_exact::<Vec<Row>>(bytes).is_err());
            assert!(from_bytes_exact::<String>(bytes).is_err());
            assert!(from_bytes_exact::<&[u8]>(bytes).is_err());
            assert!(from_bytes_exact::<Bytes>(bytes).is_err());
            assert!(from_bytes_exact::<HashMap<u32, u32>>(bytes).is_err());
            assert!(from_bytes_exact::<BTreeMap<u32, u32>>(bytes).is_err());
        }
        // Zero-sized elements take no bytes: a count beyond the input is fine for them.
        assert_eq!(from_bytes_exact::<Vec<()>>(&[200, 1]), Ok(vec![(); 200]));
    }

    // ---- Agreement with postcard on arbitrary bytes ----

    /// A xorshift64 generator (deterministic, no dependency).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// A byte, biased towards the values that matter to the format.
        fn byte(&mut self) -> u8 {
            const SPECIAL: [u8; 12] = [0, 1, 2, 3, 4, 0x7F, 0x80, 0x81, 0xFF, 0x0F, 0x10, 0xC3];
            if self.below(2) == 0 {
                SPECIAL[self.below(SPECIAL.len())]
            } else {
                self.next() as u8
            }
        }

        fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| self.byte()).collect()
        }
    }

    /// Variations of a valid encoding: every truncation, extensions, and random edits.
    fn mutations(valid: &[u8], rng: &mut Rng) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = (0..=valid.len()).map(|n| valid[..n].to_vec()).collect();
        for extra in [0u8, 1, 0x80, 0xFF] {
            let mut v = valid.to_vec();
            v.push(extra);
            out.push(v);
        }
        if valid.is_empty() {
            return out;
        }
        for _ in 0..300 {
            // One to three edits.
            let mut v = valid.to_vec();
            for _ in 0..=rng.below(3) {
                if v.is_empty() {
                    break;
                }
                let i = rng.below(v.len());
                match rng.below(4) {
                    0 => v[i] = rng.byte(),
                    1 => v[i] ^= 1 << rng.below(8),
                    2 => v.insert(i, rng.byte()),
                    _ => {
                        v.remove(i);
                    }
                }
            }
            out.push(v);
        }
        out
    }

    /// Our reader and `postcard::take_from_bytes` (with nothing left over) agree on `bytes`:
    /// both fail, or both give the same value (compared by its postcard encoding, which also
    /// tells float bit patterns apart). Returns whether it decoded.
    fn agree<'a, T: Deserialize<'a> + Serialize + Debug>(bytes: &'a [u8]) -> bool {
        let ours = from_bytes_exact::<T>(bytes);
        let theirs = match postcard::take_from_bytes::<T>(bytes) {
            Ok((v, [])) => Some(v),
            _ => None,
        };
        match (ours, theirs) {
            (Ok(a), Some(b)) => {
                assert_eq!(
                    postcard::to_allocvec(&a).unwrap(),
                    postcard::to_allocvec(&b).unwrap(),
                    "{bytes:02x?}: {a:?} vs {b:?}"
                );
                true
            }
            (Err(_), None) => false,
            (Ok(a), None) => panic!(
                "{}: ours read {bytes:02x?} as {a:?}, postcard failed",
                std::any::type_name::<T>()
            ),
            (Err(e), Some(b)) => panic!(
                "{}: postcard read {bytes:02x?} as {b:?}, ours failed: {e}",
                std::any::type_name::<T>()
            ),
        }
    }

    /// For type `$t`: the samples' encodings decode; their mutations and random byte strings
    /// get the same verdict from both readers.
    macro_rules! agree_on {
        ($rng:expr, $t:ty, $samples:expr) => {{
            let rng: &mut Rng = $rng;
            let samples: Vec<$t> = $samples;
            let mut ok = 0usize;
            for s in &samples {
                let valid = postcard::to_allocvec(s).unwrap();
                assert!(agree::<$t>(&valid), "{s:?} did not decode");
                for m in mutations(&valid, rng) {
                    ok += usize::from(agree::<$t>(&m));
                }
            }
            for _ in 0..20_000 {
                let b = rng.bytes(24);
                ok += usize::from(agree::<$t>(&b));
            }
            ok
        }};
    }

    /// (No sequences of zero-sized elements here: a random count of them, up to 2^64, takes
    /// no bytes, so both readers would loop that many times.)
    #[test]
    fn codec_reader_agrees_with_postcard_on_arbitrary_bytes() {
        let rng = &mut Rng(0x9E37_79B9_7F4A_7C15);
        agree_on!(rng, bool, vec![true, false]);
        agree_on!(rng, u8, vec![0, 255]);
        agree_on!(rng, i8, vec![-128, 127]);
        agree_on!(rng, u16, vec![0, 127, 128, 16384, u16::MAX]);
        agree_on!(rng, i16, vec![0, -1, 64, i16::MIN, i16::MAX]);
        agree_on!(rng, u32, vec![0, 300, 1 << 28, u32::MAX]);
        agree_on!(rng, i32, vec![0, -65, i32::MIN, i32::MAX]);
        agree_on!(rng, u64, vec![0, 1 << 56, 1 << 63, u64::MAX]);
        agree_on!(rng, i64, vec![0, -1 << 40, i64::MIN, i64::MAX]);
        agree_on!(rng, u128, vec![0, 1 << 100, u128::MAX]);
        agree_on!(rng, i128, vec![0, -1, i128::MIN, i128::MAX]);
        agree_on!(rng, usize, vec![0, usize::MAX]);
        agree_on!(rng, f32, vec![1.5, f32::NAN]);
        agree_on!(rng, f64, vec![-0.0, f64::INFINITY]);
        agree_on!(rng, String, vec![String::new(), "héllo".into()]);
        agree_on!(rng, &str, vec!["", "borrowed 😀"]);
        agree_on!(rng, &[u8], vec![&[][..], &[1, 2, 0xFF][..]]);
        agree_on!(rng, Vec<u8>, vec![vec![], vec![0x80; 5]]);
        agree_on!(rng, Bytes, vec![Bytes(vec![7; 9])]);
        agree_on!(rng, Option<u32>, vec![None, Some(129)]);
        agree_on!(
            rng,
            Option<Option<bool>>,
            vec![None, Some(None), Some(Some(true))]
        );
        agree_on!(rng, (), vec![()]);
        agree_on!(rng, Unit, vec![Unit]);
        agree_on!(rng, Newtype, vec![Newtype(1 << 20)]);
        agree_on!(rng, TupleStruct, vec![TupleStruct(-2, 3, "t".into())]);
        agree_on!(
            rng,
            (u8, String, Option<i64>),
            vec![(1, "a".into(), Some(-5))]
        );
        agree_on!(rng, [u16; 3], vec![[1, 300, u16::MAX]]);
        agree_on!(rng, Vec<Vec<u8>>, vec![vec![vec![1], vec![], vec![2, 3]]]);
        agree_on!(rng, Vec<Option<bool>>, vec![vec![Some(true), None]]);
        agree_on!(rng, Kinds, kinds());
        agree_on!(rng, Vec<Kinds>, vec![kinds()]);
        agree_on!(rng, BTreeMap<u16, String>, vec![[(1, "x".to_string()), (500, "y".to_string())].into()]);
        agree_on!(rng, Row, rows(2));
        agree_on!(rng, Vec<Row>, vec![rows(5)]);
        agree_on!(rng, User, vec![user(3), user(1000)]);
        agree_on!(rng, Nested, vec![nested()]);
        agree_on!(rng, IpAddr, vec![IpAddr::V4(Ipv4Addr::BROADCAST)]);
        agree_on!(rng, Duration, vec![Duration::from_millis(1500)]);
        agree_on!(rng, std::num::NonZeroU32, vec![std::num::NonZeroU32::MIN]);
        // Not vacuous: arbitrary bytes decode often enough for simple types.
        let ok = agree_on!(rng, (u16, u32), vec![]);
        assert!(ok > 100, "{ok}");
        let ok = agree_on!(rng, Vec<i32>, vec![]);
        assert!(ok > 10, "{ok}");
    }

    /// Varints of every width against postcard: all one- and two-byte strings, and for every
    /// length up to one past the maximum every final byte, both with 10 more bytes after the
    /// varint and with none (the reader has a path for each).
    #[test]
    fn codec_reader_varints_agree_with_postcard() {
        macro_rules! width {
            ($t:ty) => {{
                for a in 0..=255u8 {
                    agree::<$t>(&[a]);
                    for b in 0..=255u8 {
                        agree::<$t>(&[a, b]);
                    }
                }
                let rng = &mut Rng(0x2545_F491_4F6C_DD1D);
                for len in 1..=20usize {
                    for _ in 0..4 {
                        // `len - 1` continuation bytes with random payloads.
                        let mut prefix: Vec<u8> =
                            (1..len).map(|_| 0x80 | rng.next() as u8).collect();
                        if rng.below(2) == 0 {
                            prefix.iter_mut().for_each(|b| *b = 0xFF);
                        }
                        for last in 0..=255u8 {
                            let mut bytes = prefix.clone();
                            bytes.push(last);
                            agree::<$t>(&bytes);
                            bytes.extend([rng.byte(); 10]);
                            agree::<($t, [u8; 10])>(&bytes);
                        }
                    }
                }
            }};
        }
        width!(u16);
        width!(i16);
        width!(u32);
        width!(i32);
        width!(u64);
        width!(i64);
        width!(u128);
        width!(i128);
        width!(usize);
        width!(isize);
        // The spec's examples.
        assert_eq!(from_bytes_exact::<u16>(&[0x80, 0x80, 0x00]), Ok(0));
        assert!(from_bytes_exact::<u16>(&[0x80, 0x80, 0x80, 0x00]).is_err());
        assert_eq!(from_bytes_exact::<u16>(&[0xFF, 0xFF, 0x03]), Ok(65535));
        assert!(from_bytes_exact::<u16>(&[0xFF, 0xFF, 0x07]).is_err());
        assert!(from_bytes_exact::<u16>(&[0xFF, 0xFF, 0x83, 0x00]).is_err());
        assert_eq!(from_bytes_exact::<i16>(&[0xFF, 0xFF, 0x03]), Ok(i16::MIN));
        assert_eq!(
            from_bytes_exact::<u64>(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Ok(u64::MAX)
        );
        assert!(from_bytes_exact::<u64>(&[
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02
        ])
        .is_err());
    }

    /// Chars: postcard 1.1 (this crate's) reads the first char of the bytes and ignores the
    /// rest; postcard 1.2 requires exactly one char, and so does this reader. Otherwise the same.
    #[test]
    fn codec_reader_chars_agree_with_postcard_1_2() {
        const POOL: [u8; 14] = [
            b'a', 0, 0x7F, 0x80, 0xBF, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0xF4, 0xFF,
        ];
        let rng = &mut Rng(0xD1B5_4A32_D192_ED03);
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for len in 0..=6u8 {
            for _ in 0..3000 {
                let mut b = vec![len];
                b.extend((0..len).map(|_| POOL[rng.below(POOL.len())]));
                cases.push(b);
            }
        }
        for c in ['a', 'é', '€', '😀', char::MAX, '\u{10000}'] {
            let valid = postcard::to_allocvec(&c).unwrap();
            cases.extend(mutations(&valid, rng));
        }
        cases.push(vec![2, b'a', b'b']);
        cases.push(vec![4, b'a', 0xC3, 0xA9, b'b']);
        let mut ok = 0;
        for b in &cases {
            let ours = from_bytes_exact::<char>(b);
            let one_char = b
                .split_first()
                .and_then(|(&len, rest)| (usize::from(len) == rest.len()).then_some(rest))
                .and_then(|rest| std::str::from_utf8(rest).ok())
                .is_some_and(|s| s.chars().count() == 1);
            let theirs = match postcard::take_from_bytes::<char>(b) {
                Ok((c, [])) if one_char => Some(c),
                _ => None,
            };
            assert_eq!(ours.clone().ok(), theirs, "{b:02x?}: {ours:?}");
            ok += usize::from(theirs.is_some());
        }
        assert!(ok > 100, "{ok}");
        assert!(from_bytes_exact::<char>(&[2, b'a', b'b']).is_err());
        assert_eq!(from_bytes_exact::<char>(&[2, 0xC3, 0xA9]), Ok('é'));
    }
}
