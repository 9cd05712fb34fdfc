//! The claims of a validated token, and the typing of the registered ones (RFC 7519
//! section 4.1) that Warden checks. A registered claim of the wrong JSON type makes the token
//! malformed, never "absent".

use serde_json::{Map, Value};

use crate::JwtError;

/// The claims of a token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// `sub`, when present (for a JWT-SVID: the SPIFFE ID, always present).
    pub sub: Option<String>,
    /// `iss`; empty only for a JWT-SVID without one (JWT-SVIDs have no fixed issuer).
    pub iss: String,
    /// `aud` as a list (a single string becomes one item); never empty.
    pub aud: Vec<String>,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// Every claim of the payload, registered ones included.
    pub all: Map<String, Value>,
}

impl Claims {
    /// True when claim `name` is a string equal to one of `values`, or an array holding a
    /// string equal to one of them. Any other type (number, object, nested array) never
    /// matches.
    pub fn has_any(&self, name: &str, values: &[String]) -> bool {
        match self.all.get(name) {
            Some(Value::String(s)) => values.iter().any(|v| v == s),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .any(|s| values.iter().any(|v| v == s)),
            _ => false,
        }
    }

    /// A claim by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.all.get(name)
    }
}

/// The registered claims, typed, before any of them is checked.
pub(crate) struct Registered {
    pub(crate) iss: Option<String>,
    pub(crate) sub: Option<String>,
    /// `None` when absent or an empty array.
    pub(crate) aud: Option<Vec<String>>,
    /// Rounded down: a fractional expiry ends no later than written.
    pub(crate) exp: Option<u64>,
    /// Rounded up: a fractional start begins no earlier than written.
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
}

fn string(all: &Map<String, Value>, name: &str) -> Result<Option<String>, JwtError> {
    match all.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::Malformed(format!("claim {name} is not a string"))),
    }
}

#[derive(Clone, Copy)]
enum Round {
    Down,
    Up,
}

/// A NumericDate (RFC 7519 section 2): non-negative seconds, possibly fractional.
fn date(all: &Map<String, Value>, name: &str, round: Round) -> Result<Option<u64>, JwtError> {
    let bad = || {
        JwtError::Malformed(format!(
            "claim {name} is not a non-negative number of seconds"
        ))
    };
    match all.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(secs) = n.as_u64() {
                return Ok(Some(secs));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => {
                    let f = match round {
                        Round::Down => f.floor(),
                        Round::Up => f.ceil(),
                    };
                    // `as` saturates; anything that large is "never" either way.
                    Ok(Some(f as u64))
                }
                _ => Err(bad()),
            }
        }
        Some(_) => Err(bad()),
    }
}

impl Registered {
    pub(crate) fn parse(all: &Map<String, Value>) -> Result<Self, JwtError> {
        let aud = match all.get("aud") {
            None => None,
            Some(Value::String(s)) => Some(vec![s.clone()]),
            Some(Value::Array(items)) => {
                let mut aud = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => aud.push(s.clone()),
                        _ => {
                            return Err(JwtError::Malformed(
                                "claim aud holds something other than strings".into(),
                            ));
                        }
                    }
                }
                (!aud.is_empty()).then_some(aud)
            }
            Some(_) => {
                return Err(JwtError::Malformed(
                    "claim aud is neither a string nor an array".into(),
                ));
            }
        };
        Ok(Self {
            iss: string(all, "iss")?,
            sub: string(all, "sub")?,
            aud,
            exp: date(all, "exp", Round::Down)?,
            nbf: date(all, "nbf", Round::Up)?,
            iat: date(all, "iat", Round::Up)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(all: Value) -> Claims {
        Claims {
            sub: None,
            iss: String::new(),
            aud: vec!["a".into()],
            exp: 0,
            all: all.as_object().expect("object").clone(),
        }
    }

    #[test]
    fn has_any_matches_a_string_or_an_array_member_only() {
        let c = claims(json!({
            "groups": ["marketing", "finance"],
            "dept": "finance",
            "level": 3,
            "nested": [["finance"]],
            "obj": {"finance": true},
        }));
        let finance = vec!["finance".to_owned()];
        assert!(c.has_any("groups", &finance));
        assert!(c.has_any("dept", &finance));
        assert!(!c.has_any("level", &["3".to_owned()]));
        assert!(!c.has_any("nested", &finance));
        assert!(!c.has_any("obj", &finance));
        assert!(!c.has_any("missing", &finance));
        assert!(!c.has_any("groups", &[]));
        assert!(
            !c.has_any("groups", &["Finance".to_owned()]),
            "case-sensitive"
        );
    }

    #[test]
    fn registered_claims_are_typed() {
        let parse = |v: Value| Registered::parse(v.as_object().expect("object"));
        let r = parse(json!({"aud": "x", "exp": 10.9, "nbf": 5.1, "iat": 5})).expect("ok");
        assert_eq!(r.aud, Some(vec!["x".to_owned()]));
        assert_eq!((r.exp, r.nbf, r.iat), (Some(10), Some(6), Some(5)));
        assert_eq!(parse(json!({"aud": []})).expect("ok").aud, None);
        for bad in [
            json!({"aud": 1}),
            json!({"aud": ["a", 1]}),
            json!({"exp": "10"}),
            json!({"exp": -1}),
            json!({"nbf": true}),
            json!({"iss": 1}),
            json!({"sub": ["a"]}),
        ] {
            assert!(
                matches!(parse(bad.clone()), Err(JwtError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
