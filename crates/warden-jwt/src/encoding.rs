//! The two encodings a JWT is made of, read strictly.
//!
//! - base64url without padding (RFC 7515 section 2): `=`, `+`, `/`, whitespace and
//!   non-canonical trailing bits are errors, so one token has exactly one spelling.
//! - JSON objects only, and no member twice: RFC 7515 section 4 lets a parser keep the last
//!   duplicate, but two parsers disagreeing on which `alg` or `aud` counts is how confusion
//!   attacks start, so Warden refuses the token instead.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Decodes base64url without padding; `None` for anything else.
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JSON object whose top-level members are all distinct.
pub(crate) struct StrictObject(pub(crate) Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom(format_args!(
                            "member {:?} appears twice",
                            crate::alg::printable(&key)
                        )));
                    }
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// Parses `bytes` as one JSON object with distinct members; the error says why not (without
/// echoing the input).
pub(crate) fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    serde_json::from_slice::<StrictObject>(bytes)
        .map(|o| o.0)
        .map_err(|e| {
            // serde_json's messages name types and positions, never the input's text,
            // except for our own duplicate-member message, which is already cut short.
            e.to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(b64_decode(""), Some(Vec::new()));
        for bad in ["aGk=", "aG k", "a+/A", "aGl", "a", "aGk\n"] {
            // "aGl" has non-zero trailing bits: not the canonical spelling of "hi".
            assert_eq!(b64_decode(bad), None, "{bad:?}");
        }
        assert_eq!(b64_encode(b"\xfb\xff"), "-_8");
    }

    #[test]
    fn only_objects_with_distinct_members() {
        assert!(json_object(br#"{"a":1,"b":{"a":2}}"#).is_ok());
        for bad in [
            &br#"[1,2]"#[..],
            br#""str""#,
            b"1",
            b"null",
            br#"{"a":1,"a":2}"#,
            br#"{"a":1} x"#,
            b"",
        ] {
            assert!(
                json_object(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = json_object(br#"{"alg":"RS256","alg":"none"}"#).expect_err("duplicate");
        assert!(e.contains("\"alg\" appears twice"), "{e}");
    }
}
