//! The policy file of `warden policy put -f`: TOML, or JSON with the same shape.
//!
//! Both formats are first read into one small untyped tree and then checked by a single
//! hand-written walker. That keeps the two formats' behaviour and error messages identical
//! and lets every error name its exact key path (`workload[1].inbound.http[0]`), which
//! serde's derived errors do not do on their own.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::model::{PartError, RawListeners, WorkloadPolicy, join_key as join, validate_parts};
use crate::route::{RawRoute, UserRequirement};

/// The syntax of a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// JSON if the first non-whitespace character is `{`, TOML otherwise (a TOML document
    /// cannot start with `{`).
    pub fn sniff(text: &str) -> Format {
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// Why a policy file was rejected. Every variant but the syntax ones starts with the key
/// path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyFileError {
    #[error("invalid TOML: {0}")]
    Toml(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{path}: missing (required)")]
    Missing { path: String },
    #[error("{path}: unknown key (expected {expected})")]
    UnknownKey {
        path: String,
        expected: &'static str,
    },
    #[error("{path}: expected {expected}, found {found}")]
    WrongType {
        path: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A part of a workload policy (ID, listener name, pattern, route) failed the
    /// validation every front-end shares; `path` is the key path of the field.
    #[error("{path}: {}", .error.detail())]
    Part { path: String, error: PartError },
    #[error("{path}: {value:?}: expected \"enforce\" or \"audit\"")]
    Mode { path: String, value: String },
    #[error("{path}: {spiffe_id:?} is already defined by workload[{first}]")]
    DuplicateWorkload {
        path: String,
        spiffe_id: String,
        first: usize,
    },
}

/// Parses a policy file, picking the format with [`Format::sniff`].
pub fn parse_policy_file(text: &str) -> Result<Vec<WorkloadPolicy>, PolicyFileError> {
    parse_policy_file_as(text, Format::sniff(text))
}

/// Parses a policy file in the given format. All policies have version 0 and no metadata;
/// the control plane assigns those when it stores them.
pub fn parse_policy_file_as(
    text: &str,
    format: Format,
) -> Result<Vec<WorkloadPolicy>, PolicyFileError> {
    let root = match format {
        Format::Toml => {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| PolicyFileError::Toml(e.to_string()))?;
            Node::from_toml(toml::Value::Table(table))
        }
        Format::Json => {
            serde_json::from_str::<Node>(text).map_err(|e| PolicyFileError::Json(e.to_string()))?
        }
    };
    read_file(root)
}

/// Renders policies as a policy file (TOML). Control-plane metadata becomes comments, so
/// the text parses back to the same rules.
pub fn to_toml(policies: &[WorkloadPolicy]) -> String {
    let mut out = String::new();
    for (i, p) in policies.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // `write!` to a String cannot fail; the results are ignored for that reason.
        if p.version != 0 {
            let _ = writeln!(out, "# version = {}", p.version);
        }
        if let Some(by) = &p.updated_by {
            let _ = writeln!(out, "# updated_by = {}", toml_string(by));
        }
        if let Some(at) = p.updated_at_unix_ms {
            let _ = writeln!(out, "# updated_at_unix_ms = {at}");
        }
        out.push_str("[[workload]]\n");
        let _ = writeln!(out, "spiffe_id = {}", toml_string(p.spiffe_id.as_str()));
        if !p.mode.is_enforce() {
            let _ = writeln!(out, "mode = {}", toml_string(p.mode.as_str()));
        }
        for (direction, map) in [("inbound", &p.inbound), ("outbound", &p.outbound)] {
            for (listener, patterns) in map {
                let _ = write!(out, "{direction}.{} = [", toml_key(listener));
                // One pattern per line once there are several: easier to diff and review.
                if patterns.len() > 1 {
                    out.push('\n');
                    for pat in patterns {
                        let _ = writeln!(out, "    {},", toml_string(pat.as_str()));
                    }
                } else if let Some(pat) = patterns.first() {
                    out.push_str(&toml_string(pat.as_str()));
                }
                out.push_str("]\n");
            }
        }
        for route in &p.routes {
            out.push_str("\n[[workload.route]]\n");
            let _ = writeln!(out, "listener = {}", toml_string(&route.listener));
            let _ = writeln!(out, "path_prefix = {}", toml_string(&route.path_prefix));
            let list = |items: Vec<&str>| {
                let quoted: Vec<String> = items.into_iter().map(toml_string).collect();
                format!("[{}]", quoted.join(", "))
            };
            if !route.methods.is_empty() {
                let _ = writeln!(
                    out,
                    "methods = {}",
                    list(route.methods.iter().map(String::as_str).collect())
                );
            }
            if !route.peers.is_empty() {
                let _ = writeln!(
                    out,
                    "peers = {}",
                    list(route.peers.iter().map(|p| p.as_str()).collect())
                );
            }
            if let Some(users) = &route.users {
                let claims: Vec<String> = users
                    .claims
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{} = {}",
                            toml_key(k),
                            list(v.iter().map(String::as_str).collect())
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "users = {{ jwt = {}, claims = {{ {} }} }}",
                    toml_string(&users.jwt),
                    claims.join(", ")
                );
            }
        }
    }
    out
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        toml_string(k)
    }
}

/// The untyped tree both formats are read into. Only the shapes a policy file can use are
/// kept; everything else is remembered by name for the error message.
#[derive(Debug)]
enum Node {
    Str(String),
    Array(Vec<Node>),
    Table(Vec<(String, Node)>),
    Other(&'static str),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Str(_) => "a string",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
            Node::Other(k) => k,
        }
    }

    fn from_toml(v: toml::Value) -> Node {
        match v {
            toml::Value::String(s) => Node::Str(s),
            toml::Value::Array(a) => Node::Array(a.into_iter().map(Node::from_toml).collect()),
            toml::Value::Table(t) => Node::Table(
                t.into_iter()
                    .map(|(k, v)| (k, Node::from_toml(v)))
                    .collect(),
            ),
            toml::Value::Integer(_) => Node::Other("an integer"),
            toml::Value::Float(_) => Node::Other("a float"),
            toml::Value::Boolean(_) => Node::Other("a boolean"),
            toml::Value::Datetime(_) => Node::Other("a datetime"),
        }
    }
}

/// Used for JSON only: unlike `serde_json::Value` it rejects duplicate keys instead of
/// silently keeping the last one, which could hide half of an allowlist from review.
impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a policy file value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Other("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Other("null"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Table(entries))
    }
}

fn read_file(root: Node) -> Result<Vec<WorkloadPolicy>, PolicyFileError> {
    let Node::Table(entries) = root else {
        return Err(wrong_type("(top level)", "a table", &root));
    };
    let mut workloads = None;
    for (key, value) in entries {
        match key.as_str() {
            "workload" => workloads = Some(value),
            _ => return Err(unknown_key(&join("", &key), "\"workload\"")),
        }
    }
    let Some(workloads) = workloads else {
        return Err(PolicyFileError::Missing {
            path: "workload".into(),
        });
    };
    let Node::Array(items) = workloads else {
        return Err(wrong_type(
            "workload",
            "an array of tables ([[workload]])",
            &workloads,
        ));
    };

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("workload[{i}]");
        let policy = read_workload(&path, item)?;
        if let Some(&first) = seen.get(policy.spiffe_id.as_str()) {
            return Err(PolicyFileError::DuplicateWorkload {
                path: format!("{path}.spiffe_id"),
                spiffe_id: policy.spiffe_id.as_str().to_owned(),
                first,
            });
        }
        seen.insert(policy.spiffe_id.as_str().to_owned(), i);
        out.push(policy);
    }
    Ok(out)
}

fn read_workload(path: &str, node: Node) -> Result<WorkloadPolicy, PolicyFileError> {
    let Node::Table(entries) = node else {
        return Err(wrong_type(path, "a table", &node));
    };
    let mut spiffe_id = None;
    let mut mode = crate::model::Mode::Enforce;
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    let mut routes = Vec::new();
    for (key, value) in entries {
        let key_path = join(path, &key);
        match key.as_str() {
            "spiffe_id" => {
                let Node::Str(s) = value else {
                    return Err(wrong_type(&key_path, "a SPIFFE ID string", &value));
                };
                spiffe_id = Some(s);
            }
            "mode" => {
                let text = string(&key_path, value, "\"enforce\" or \"audit\"")?;
                mode = crate::model::Mode::parse(&text).ok_or(PolicyFileError::Mode {
                    path: key_path,
                    value: text,
                })?;
            }
            "inbound" => inbound = read_listeners(&key_path, value)?,
            "outbound" => outbound = read_listeners(&key_path, value)?,
            "route" => routes = read_routes(&key_path, value)?,
            _ => {
                return Err(unknown_key(
                    &key_path,
                    "one of \"spiffe_id\", \"mode\", \"inbound\", \"outbound\", \"route\"",
                ));
            }
        }
    }
    let Some(spiffe_id) = spiffe_id else {
        return Err(PolicyFileError::Missing {
            path: join(path, "spiffe_id"),
        });
    };
    // The same validation as the wire and the store; only the error's key path is ours.
    let mut policy = validate_parts(&spiffe_id, borrowed(&inbound), borrowed(&outbound), &routes)
        .map_err(|error| PolicyFileError::Part {
        path: error.field_path(path, "route"),
        error,
    })?;
    policy.mode = mode;
    Ok(policy)
}

/// `[[workload.route]]`: an array of tables, type-checked into raw routes; their values
/// are validated by `validate_parts`.
fn read_routes(path: &str, node: Node) -> Result<Vec<RawRoute>, PolicyFileError> {
    let Node::Array(items) = node else {
        return Err(wrong_type(
            path,
            "an array of tables ([[workload.route]])",
            &node,
        ));
    };
    let mut routes = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let route_path = format!("{path}[{i}]");
        let Node::Table(entries) = item else {
            return Err(wrong_type(&route_path, "a table", &item));
        };
        let mut route = RawRoute::default();
        let (mut listener, mut prefix) = (None, None);
        for (key, value) in entries {
            let key_path = join(&route_path, &key);
            match key.as_str() {
                "listener" => listener = Some(string(&key_path, value, "a listener name")?),
                "path_prefix" => prefix = Some(string(&key_path, value, "a path like \"/docs/\"")?),
                "methods" => route.methods = strings(&key_path, value, "HTTP method")?,
                "peers" => route.peers = strings(&key_path, value, "SPIFFE ID pattern")?,
                "users" => route.users = Some(read_users(&key_path, value)?),
                _ => {
                    return Err(unknown_key(
                        &key_path,
                        "one of \"listener\", \"path_prefix\", \"methods\", \"peers\", \"users\"",
                    ));
                }
            }
        }
        route.listener = listener.ok_or_else(|| PolicyFileError::Missing {
            path: join(&route_path, "listener"),
        })?;
        route.path_prefix = prefix.ok_or_else(|| PolicyFileError::Missing {
            path: join(&route_path, "path_prefix"),
        })?;
        routes.push(route);
    }
    Ok(routes)
}

fn read_users(path: &str, node: Node) -> Result<UserRequirement, PolicyFileError> {
    let Node::Table(entries) = node else {
        return Err(wrong_type(
            path,
            "a table like { jwt = \"idp\", claims = { ... } }",
            &node,
        ));
    };
    let mut jwt = None;
    let mut claims = std::collections::BTreeMap::new();
    for (key, value) in entries {
        let key_path = join(path, &key);
        match key.as_str() {
            "jwt" => jwt = Some(string(&key_path, value, "a [[jwt]] name")?),
            "claims" => {
                let Node::Table(list) = value else {
                    return Err(wrong_type(
                        &key_path,
                        "a table of claim name -> values",
                        &value,
                    ));
                };
                for (name, values) in list {
                    let claim_path = join(&key_path, &name);
                    claims.insert(name, strings(&claim_path, values, "claim value")?);
                }
            }
            _ => return Err(unknown_key(&key_path, "one of \"jwt\", \"claims\"")),
        }
    }
    Ok(UserRequirement {
        jwt: jwt.ok_or_else(|| PolicyFileError::Missing {
            path: join(path, "jwt"),
        })?,
        claims,
    })
}

fn string(path: &str, node: Node, what: &'static str) -> Result<String, PolicyFileError> {
    match node {
        Node::Str(s) => Ok(s),
        other => Err(wrong_type(path, what, &other)),
    }
}

fn strings(path: &str, node: Node, what: &'static str) -> Result<Vec<String>, PolicyFileError> {
    let Node::Array(items) = node else {
        return Err(wrong_type(path, "an array of strings", &node));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| string(&format!("{path}[{i}]"), item, what))
        .collect()
}

fn borrowed(raw: &[(String, Vec<String>)]) -> RawListeners<'_> {
    raw.iter()
        .map(|(name, list)| (name.as_str(), list.iter().map(String::as_str).collect()))
        .collect()
}

/// A table of listener name -> array of pattern strings, type-checked; the names and
/// patterns themselves are validated by `validate_parts`.
fn read_listeners(path: &str, node: Node) -> Result<Vec<(String, Vec<String>)>, PolicyFileError> {
    let Node::Table(entries) = node else {
        return Err(wrong_type(
            path,
            "a table of listener name -> patterns",
            &node,
        ));
    };
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let list_path = join(path, &name);
        let Node::Array(items) = value else {
            return Err(wrong_type(
                &list_path,
                "an array of SPIFFE ID patterns",
                &value,
            ));
        };
        let mut patterns = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let Node::Str(s) = item else {
                return Err(wrong_type(
                    &format!("{list_path}[{i}]"),
                    "a SPIFFE ID pattern string",
                    &item,
                ));
            };
            patterns.push(s);
        }
        out.push((name, patterns));
    }
    Ok(out)
}

fn unknown_key(path: &str, expected: &'static str) -> PolicyFileError {
    PolicyFileError::UnknownKey {
        path: path.to_owned(),
        expected,
    }
}

fn wrong_type(path: &str, expected: &'static str, found: &Node) -> PolicyFileError {
    PolicyFileError::WrongType {
        path: path.to_owned(),
        expected,
        found: found.kind(),
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
