//! Bind values for predicate dependencies, decoded from each backend's bind collector by SQL
//! type. Only integers, booleans and text are decoded; anything else (dates, decimals,
//! floats, bytes, NULL, UUIDs) is [`BindValue::Other`], and a condition on it is not used.
//!
//! PostgreSQL and MySQL collectors expose their raw bytes and type metadata (Diesel's
//! `i-implement-a-third-party-backend-and-opt-into-breaking-changes` feature, which is why
//! Diesel is pinned to 2.3.x). SQLite's collector is private; its `Debug` output (already
//! part of every key) is read instead: `[(I32(7), Integer), (BorrowedString("x"), Text)]`.

use crate::key::BindValue;

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn int_be(bytes: &[u8]) -> Option<i64> {
    Some(match bytes.len() {
        2 => i64::from(i16::from_be_bytes(bytes.try_into().ok()?)),
        4 => i64::from(i32::from_be_bytes(bytes.try_into().ok()?)),
        8 => i64::from_be_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn text(bytes: &[u8]) -> BindValue {
    match std::str::from_utf8(bytes) {
        Ok(s) => BindValue::Text(s.to_string()),
        Err(_) => BindValue::Other,
    }
}

/// PostgreSQL: binary format, by type OID.
#[cfg(feature = "postgres")]
pub(crate) fn pg_values(
    c: &diesel::query_builder::bind_collector::RawBytesBindCollector<diesel::pg::Pg>,
    out: &mut Vec<BindValue>,
) {
    out.extend(c.metadata.iter().zip(&c.binds).map(|(meta, bytes)| {
        let (Ok(oid), Some(bytes)) = (meta.oid(), bytes) else {
            return BindValue::Other;
        };
        match oid {
            // bool
            16 if bytes.len() == 1 => BindValue::Int(i64::from(bytes[0] != 0)),
            // int8, int2, int4
            20 | 21 | 23 => int_be(bytes).map_or(BindValue::Other, BindValue::Int),
            // text, varchar, bpchar, name
            25 | 1043 | 1042 | 19 => text(bytes),
            _ => BindValue::Other,
        }
    }));
}

/// MySQL: native little-endian integers, text as bytes.
#[cfg(feature = "mysql")]
pub(crate) fn mysql_values(
    c: &diesel::query_builder::bind_collector::RawBytesBindCollector<diesel::mysql::Mysql>,
    out: &mut Vec<BindValue>,
) {
    use diesel::mysql::MysqlType as T;
    out.extend(c.metadata.iter().zip(&c.binds).map(|(ty, bytes)| {
        let Some(b) = bytes else {
            return BindValue::Other;
        };
        let int = |signed: bool| -> Option<i64> {
            let mut le = b.clone();
            le.reverse();
            let v = int_be(&le).or_else(|| (b.len() == 1).then(|| i64::from(b[0] as i8)))?;
            if signed {
                return Some(v);
            }
            // Unsigned: reinterpret the bits at the width of the value.
            Some(match b.len() {
                1 => i64::from(b[0]),
                2 => i64::from(u16::from_le_bytes([b[0], b[1]])),
                4 => i64::from(u32::from_le_bytes(b.as_slice().try_into().ok()?)),
                8 => i64::try_from(u64::from_le_bytes(b.as_slice().try_into().ok()?)).ok()?,
                _ => return None,
            })
        };
        let v = match ty {
            T::Tiny | T::Short | T::Long | T::LongLong => int(true),
            T::UnsignedTiny | T::UnsignedShort | T::UnsignedLong | T::UnsignedLongLong => {
                int(false)
            }
            T::String => return text(b),
            _ => None,
        };
        v.map_or(BindValue::Other, BindValue::Int)
    }));
}

/// SQLite: parsed from the collector's `Debug` output, appended to `out`.
pub(crate) fn sqlite_values(debug: &str, out: &mut Vec<BindValue>) {
    const LIST: &str = "binds: [";
    let rest = match debug.strip_prefix("SqliteBindCollector { binds: [") {
        Some(rest) => rest,
        None => match debug.find(LIST) {
            Some(start) => &debug[start + LIST.len()..],
            None => return,
        },
    };
    let mut p = Parser {
        s: rest.as_bytes(),
        i: 0,
    };
    loop {
        p.skip_ws_commas();
        if p.peek() != Some(b'(') {
            break;
        }
        p.i += 1;
        let value = p.value();
        // Skip the rest of the tuple: `, SqliteType)`.
        match p.s[p.i..].iter().position(|&b| b == b')') {
            Some(n) => p.i += n + 1,
            None => break,
        }
        out.push(value);
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b',' | b'\n')) {
            self.i += 1;
        }
    }

    /// One `Variant(payload)` or `Variant`; leaves the cursor after it.
    fn value(&mut self) -> BindValue {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
            self.i += 1;
        }
        let variant = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        if self.peek() != Some(b'(') {
            return BindValue::Other; // Null
        }
        self.i += 1;
        match variant {
            "I32" | "I64" => {
                let n = self.until_paren();
                n.trim().parse().map_or(BindValue::Other, BindValue::Int)
            }
            "String" | "BorrowedString" if self.peek() == Some(b'"') => {
                let v = self.debug_string();
                self.until_paren();
                v.map_or(BindValue::Other, BindValue::Text)
            }
            _ => {
                self.skip_balanced();
                BindValue::Other
            }
        }
    }

    /// Text up to the closing `)` of a numeric payload.
    fn until_paren(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(|b| b != b')') {
            self.i += 1;
        }
        let t = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        t
    }

    /// Skips a payload with nested brackets (binary data: `[1, 2]`) up to its `)`.
    fn skip_balanced(&mut self) {
        let mut depth = 1usize;
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'(' | b'[' => depth += 1,
                b')' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// A Rust `Debug` string literal; `None` if it uses an escape this does not know.
    fn debug_string(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let b = self.peek()?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'0' => out.push(0),
                        b'\\' | b'"' | b'\'' => out.push(e),
                        b'u' => {
                            if self.peek()? != b'{' {
                                return None;
                            }
                            let end = self.s[self.i..].iter().position(|&c| c == b'}')?;
                            let hex =
                                std::str::from_utf8(&self.s[self.i + 1..self.i + end]).ok()?;
                            let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            self.i += end + 1;
                        }
                        _ => return None,
                    }
                }
                _ => out.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_debug_output_is_decoded() {
        let d = r#"SqliteBindCollector { binds: [(I32(7), Integer), (BorrowedString("a \"b\"\n\u{1b}"), Text), (F64(1.5), Double), (Null, Integer), (Binary([1, 2]), Binary), (I64(-3), BigInt), (String("x)"), Text)] }"#;
        let values = |d: &str| {
            let mut out = Vec::new();
            sqlite_values(d, &mut out);
            out
        };
        assert_eq!(
            values(d),
            vec![
                BindValue::Int(7),
                BindValue::Text("a \"b\"\n\u{1b}".into()),
                BindValue::Other,
                BindValue::Other,
                BindValue::Other,
                BindValue::Int(-3),
                BindValue::Text("x)".into()),
            ]
        );
        assert!(values("garbage").is_empty());
        assert!(values("binds: [(").len() <= 1);
    }
}
