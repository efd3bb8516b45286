//! Predicate dependencies: the values of a query's equality conditions, in one canonical form
//! shared by readers (which take them from SQL) and writers (which take them from the rows
//! they wrote).
//!
//! A cached query whose WHERE clause says `addons.author_id = 7` is registered on the
//! predicate list of `(addons, author_id, 7)`; a write whose new (or old) row has
//! `author_id = 7` walks that list. That is how a row that *enters* a cached result
//! invalidates it, which flush lists (the rows a result contains) cannot see.
//!
//! The canonical form must be equal on both sides for every pair of values the database
//! considers equal, or a write misses a query (stale). It may be equal for values the
//! database considers different: that only invalidates more. So it is deliberately coarse:
//!
//! - integers, booleans (`1`/`0`, as SQLite and MySQL store them) and integral floats are one
//!   integer;
//! - text that reads as a number or a boolean (`'7'`, `'7.0'`, `'true'`, `'t'`, `'yes'`) is
//!   that number (databases convert such text when it is compared to a number column);
//! - other text is trimmed and lowercased (case-insensitive collations, `citext`, padded
//!   `CHAR(n)`).
//!
//! Values that have no canonical form (non-integral floats, NULL, arrays) make no predicate:
//! the reader drops such a condition, which makes its dependency broader, never narrower.

use std::fmt::Write as _;

use crate::key::safe_part;

/// One value of an equality condition, in canonical form.
///
/// ```
/// use caching_core::PredicateValue as V;
/// assert_eq!(V::from_text("  7 "), V::from_int(7).into());
/// assert_eq!(V::from_bool(true), V::from_int(1));
/// assert_eq!(V::from_text("Public"), V::from_text("public"));
/// assert_eq!(V::from_float(7.0), Some(V::from_int(7)));
/// assert_eq!(V::from_float(7.5), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PredicateValue {
    /// An integer (also booleans, integral floats, numeric text).
    Int(i64),
    /// Text, trimmed and lowercased.
    Text(String),
}

impl PredicateValue {
    /// An integer.
    pub fn from_int(i: i64) -> Self {
        PredicateValue::Int(i)
    }

    /// A boolean: `1` or `0`.
    pub fn from_bool(b: bool) -> Self {
        PredicateValue::Int(i64::from(b))
    }

    /// A float: only an integral one below 2^53 (where every integer is exactly representable)
    /// has a canonical form.
    pub fn from_float(f: f64) -> Option<Self> {
        const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
        (f.is_finite() && f.fract() == 0.0 && f.abs() < LIMIT).then_some(Self::Int(f as i64))
    }

    /// Text: numbers and booleans written as text become those; other text is trimmed and
    /// lowercased. Text that reads as a non-integral number has no canonical form.
    pub fn from_text(s: &str) -> Option<Self> {
        let t = s.trim();
        if let Ok(i) = t.parse::<i64>() {
            return Some(Self::Int(i));
        }
        if looks_numeric(t) {
            // `7.000` is exactly 7: read the integer part as an integer, not through a float
            // (which rounds above 2^53).
            if let Some((int, frac)) = t.split_once('.') {
                if frac.bytes().all(|b| b == b'0') {
                    if let Ok(i) = int.parse::<i64>() {
                        return Some(Self::Int(i));
                    }
                }
            }
            return t.parse::<f64>().ok().and_then(Self::from_float);
        }
        let lower = t.to_lowercase();
        match lower.as_str() {
            "true" | "t" | "yes" | "y" | "on" => Some(Self::Int(1)),
            "false" | "f" | "no" | "n" | "off" => Some(Self::Int(0)),
            _ => Some(Self::Text(lower)),
        }
    }

    /// A value as serde serialises it (how writers see their rows' fields).
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        use serde_json::Value;
        match v {
            Value::Bool(b) => Some(Self::from_bool(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Some(Self::Int(i)),
                None => n.as_f64().and_then(Self::from_float),
            },
            Value::String(s) => Self::from_text(s),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }

    /// The value as a key part (`i7`, `tpublic`, or a hash for long or unsafe text).
    pub(crate) fn key_part(&self) -> String {
        match self {
            PredicateValue::Int(i) => {
                let mut s = String::with_capacity(21);
                let _ = write!(s, "i{i}");
                s
            }
            PredicateValue::Text(t) => format!("t{}", safe_part(t)),
        }
    }
}

/// Whether `t` is written like a number (digits, sign, point, exponent); `inf`/`nan` are not.
fn looks_numeric(t: &str) -> bool {
    !t.is_empty()
        && t.bytes().any(|b| b.is_ascii_digit())
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
}

#[cfg(test)]
mod tests {
    use super::PredicateValue as V;

    #[test]
    fn equal_database_values_have_one_form() {
        assert_eq!(V::from_text("7"), Some(V::Int(7)));
        assert_eq!(V::from_text("7.0"), Some(V::Int(7)));
        assert_eq!(V::from_text("1e1"), Some(V::Int(10)));
        assert_eq!(V::from_text("t"), Some(V::Int(1)));
        assert_eq!(V::from_text("FALSE"), Some(V::Int(0)));
        assert_eq!(V::from_text("Ab "), V::from_text("ab"));
        assert_eq!(V::from_json(&serde_json::json!(7.0)), Some(V::Int(7)));
        assert_eq!(V::from_json(&serde_json::json!("7")), Some(V::Int(7)));
        assert_eq!(V::from_json(&serde_json::json!(true)), Some(V::Int(1)));
    }

    #[test]
    fn values_without_a_form_make_no_predicate() {
        assert_eq!(V::from_text("7.5"), None);
        assert_eq!(V::from_float(f64::NAN), None);
        assert_eq!(V::from_float(1e300), None);
        assert_eq!(V::from_json(&serde_json::Value::Null), None);
        assert_eq!(V::from_text("inf"), Some(V::Text("inf".into())));
    }

    #[test]
    fn key_parts_are_safe_and_distinct() {
        assert_eq!(V::Int(7).key_part(), "i7");
        assert_eq!(V::Text("i7".into()).key_part(), "ti7");
        assert!(V::Text("x\r\nflush_all".into())
            .key_part()
            .starts_with("t#"));
        assert!(crate::key::is_valid_key(
            &V::Text("é".repeat(300)).key_part()
        ));
    }
}
