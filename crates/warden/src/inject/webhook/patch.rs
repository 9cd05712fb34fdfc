//! An RFC 6902 JSON Patch from one JSON value to another, as the admission webhook answers.
//!
//! A structural diff: objects key by key (`remove` for keys that went, `add` for new ones,
//! recursion for shared ones), arrays by their common head and tail, then element by
//! element, with `add`s or `remove`s for the difference in length; anything else that
//! differs is a `replace`. Paths are RFC 6901 pointers (`~` as `~0`, `/` as `~1`). Applied in
//! order to `from`, the operations give exactly `to`; the injector's changes (a container
//! inserted at the front of `initContainers`, keys added to mappings) come out as a few
//! `add`s rather than a copy of the whole pod.

use serde_json::{Map, Value, json};

/// The operations that turn `from` into `to`; empty when they are equal.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    walk(&mut String::new(), from, to, &mut ops);
    ops
}

/// `~` and `/` escaped for one reference token of a JSON pointer.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn walk(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => objects(path, a, b, ops),
        (Value::Array(a), Value::Array(b)) => arrays(path, a, b, ops),
        _ if from == to => {}
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": to})),
    }
}

fn with_token<R>(path: &mut String, token: &str, f: impl FnOnce(&mut String) -> R) -> R {
    let len = path.len();
    path.push('/');
    path.push_str(&escape(token));
    let r = f(path);
    path.truncate(len);
    r
}

fn objects(
    path: &mut String,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    ops: &mut Vec<Value>,
) {
    for key in a.keys().filter(|k| !b.contains_key(*k)) {
        with_token(path, key, |p| {
            ops.push(json!({"op": "remove", "path": p.as_str()}))
        });
    }
    for (key, new) in b {
        with_token(path, key, |p| match a.get(key) {
            Some(old) => walk(p, old, new, ops),
            None => ops.push(json!({"op": "add", "path": p.as_str(), "value": new})),
        });
    }
}

fn arrays(path: &mut String, a: &[Value], b: &[Value], ops: &mut Vec<Value>) {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a_mid, b_mid) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let shared = a_mid.len().min(b_mid.len());
    for i in 0..shared {
        with_token(path, &(head + i).to_string(), |p| {
            walk(p, &a_mid[i], &b_mid[i], ops)
        });
    }
    // New elements go where they belong; the tail after them moves up by itself.
    for (j, new) in b_mid.iter().enumerate().skip(shared) {
        with_token(path, &(head + j).to_string(), |p| {
            ops.push(json!({"op": "add", "path": p.as_str(), "value": new}));
        });
    }
    // Each removal at the same index takes the next surplus element.
    for _ in shared..a_mid.len() {
        with_token(path, &(head + shared).to_string(), |p| {
            ops.push(json!({"op": "remove", "path": p.as_str()}));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small applier for the tests (the webhook test in tests/ has its own, written
    /// independently of this module).
    fn apply(doc: &mut Value, ops: &[Value]) {
        for op in ops {
            let path = op["path"].as_str().expect("path");
            let tokens: Vec<String> = path
                .split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect();
            let (last, parents) = tokens.split_last().expect("not the root");
            let mut target = &mut *doc;
            for t in parents {
                target = match target {
                    Value::Object(m) => m.get_mut(t).expect("parent"),
                    Value::Array(v) => &mut v[t.parse::<usize>().expect("index")],
                    _ => panic!("scalar parent"),
                };
            }
            let value = op.get("value").cloned();
            match (op["op"].as_str().expect("op"), target) {
                ("add" | "replace", Value::Object(m)) => {
                    m.insert(last.clone(), value.expect("value"));
                }
                ("remove", Value::Object(m)) => {
                    m.remove(last).expect("present");
                }
                ("add", Value::Array(v)) => v.insert(last.parse().expect("i"), value.expect("v")),
                ("replace", Value::Array(v)) => {
                    v[last.parse::<usize>().expect("i")] = value.expect("v")
                }
                ("remove", Value::Array(v)) => {
                    v.remove(last.parse().expect("i"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn applying_the_diff_gives_the_target() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1})),
            (json!({"a": 1, "b/c~d": 2}), json!({"a": 2, "e~/f": [1]})),
            (json!({"l": [1, 2, 3]}), json!({"l": [0, 1, 2, 3]})),
            (json!({"l": [1, 2, 3]}), json!({"l": [1, 3]})),
            (json!({"l": [1, 2, 3]}), json!({"l": []})),
            (json!({"l": []}), json!({"l": [{"x": 1}, 2]})),
            (
                json!({"l": [{"n": "a", "p": 1}, {"n": "b"}]}),
                json!({"l": [{"n": "w"}, {"n": "a", "p": 2}, {"n": "b"}, 5]}),
            ),
            (
                json!({"x": {"y": [1, {"z": null}]}}),
                json!({"x": {"y": "s"}}),
            ),
            (json!({"l": [1, 1, 1]}), json!({"l": [1, 1]})),
            (json!({"l": [1, 2, 1, 2]}), json!({"l": [2, 1, 2, 1, 2, 9]})),
        ];
        for (from, to) in cases {
            let ops = diff(&from, &to);
            let mut doc = from.clone();
            apply(&mut doc, &ops);
            assert_eq!(doc, to, "{from} -> {to} with {ops:?}");
        }
    }

    #[test]
    fn an_insertion_at_the_front_is_one_add_and_keys_are_escaped() {
        let ops = diff(
            &json!({"spec": {"initContainers": [{"name": "a"}]}}),
            &json!({"spec": {"initContainers": [{"name": "w"}, {"name": "a"}]}}),
        );
        assert_eq!(
            ops,
            [json!({"op": "add", "path": "/spec/initContainers/0", "value": {"name": "w"}})]
        );
        let ops = diff(
            &json!({"m": {}}),
            &json!({"m": {"warden.dev/injected": "true"}}),
        );
        assert_eq!(ops[0]["path"], "/m/warden.dev~1injected");
        assert_eq!(escape("a~/b"), "a~0~1b");
        assert!(diff(&json!([1]), &json!([1])).is_empty());
    }
}
