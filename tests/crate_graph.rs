//! The crate graph has the shape ARCHITECTURE.md draws: `warden-identity` and
//! `warden-policy` at the bottom, `warden-config` beside them, and the data plane
//! (`warden-sidecar`) and the control plane (`warden-control`) side by side, neither
//! depending on the other, directly or through another crate. Read from the manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The workspace's own crates and the `warden-*` crates each one depends on (normal
/// dependencies; dev-dependencies are for tests).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&root).expect("crates/") {
        let dir = entry.expect("entry").path();
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = text.parse().expect("valid manifest");
        let name = doc["package"]["name"].as_str().expect("name").to_owned();
        let deps = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| {
                d.keys()
                    .filter(|k| k.starts_with("warden"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        graph.insert(name, deps);
    }
    graph
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(c) = stack.pop() {
        if !seen.insert(c.clone()) {
            continue;
        }
        for d in graph.get(&c).into_iter().flatten() {
            if d == to {
                return true;
            }
            stack.push(d.clone());
        }
    }
    false
}

#[test]
fn the_control_plane_and_the_data_plane_are_siblings() {
    let g = graph();
    assert!(
        g.contains_key("warden-sidecar") && g.contains_key("warden-control"),
        "{g:?}"
    );
    assert!(!reaches(&g, "warden-control", "warden-sidecar"), "{g:?}");
    assert!(!reaches(&g, "warden-sidecar", "warden-control"), "{g:?}");
    // The shared pieces sit below both.
    for shared in ["warden-identity", "warden-policy", "warden-config"] {
        assert!(reaches(&g, "warden-control", shared), "control -> {shared}");
        assert!(reaches(&g, "warden-sidecar", shared), "sidecar -> {shared}");
        assert!(
            !reaches(&g, shared, "warden-sidecar"),
            "{shared} -> sidecar"
        );
        assert!(
            !reaches(&g, shared, "warden-control"),
            "{shared} -> control"
        );
    }
    // The bottom: identity depends on no other Warden crate but the generated protos.
    assert!(
        g["warden-identity"].iter().all(|d| d == "warden-proto"),
        "{:?}",
        g["warden-identity"]
    );
}

/// The crate diagram at the top of ARCHITECTURE.md lists, for each crate, exactly its direct
/// `warden-*` dependencies (a crate with a line of its own; the last line names the crates
/// with none).
#[test]
fn the_architecture_diagram_is_the_manifests() {
    let g = graph();
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md");
    let diagram = doc
        .split("```")
        .nth(1)
        .expect("the crate diagram is the first code block");
    let mut drawn = BTreeMap::new();
    for line in diagram.lines() {
        let Some((from, to)) = line.split_once("──>") else {
            continue;
        };
        let name = from
            .split_whitespace()
            .next()
            .expect("a crate name")
            .to_owned();
        let deps: BTreeSet<String> = to
            .split(',')
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        drawn.insert(name, deps);
    }
    for (name, deps) in &g {
        match drawn.get(name) {
            Some(d) => assert_eq!(d, deps, "ARCHITECTURE.md's line for {name}"),
            None => assert!(
                deps.is_empty(),
                "{name} depends on {deps:?} but has no line in ARCHITECTURE.md's diagram"
            ),
        }
    }
    for name in drawn.keys() {
        assert!(
            g.contains_key(name),
            "the diagram draws {name}, which is not a crate"
        );
    }
}
