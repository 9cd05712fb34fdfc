use super::*;

const TOML: &str = r#"
[[workload]]
spiffe_id = "spiffe://example.org/ns/rag/sa/vectordb"
inbound.http = ["spiffe://example.org/ns/rag/sa/retriever"]
outbound.llm = ["spiffe://example.org/ns/rag/sa/llm"]

[[workload]]
spiffe_id = "spiffe://example.org/ns/rag/sa/retriever"
inbound.http = ["spiffe://example.org/ns/rag/sa/app", "spiffe://example.org/ns/ops/**"]
inbound.admin-api = []
outbound.vectordb = ["spiffe://example.org/ns/rag/sa/vectordb"]
"#;

const JSON: &str = r#"  {
  "workload": [
    {
      "spiffe_id": "spiffe://example.org/ns/rag/sa/vectordb",
      "inbound": { "http": ["spiffe://example.org/ns/rag/sa/retriever"] },
      "outbound": { "llm": ["spiffe://example.org/ns/rag/sa/llm"] }
    },
    {
      "spiffe_id": "spiffe://example.org/ns/rag/sa/retriever",
      "inbound": {
        "http": ["spiffe://example.org/ns/rag/sa/app", "spiffe://example.org/ns/ops/**"],
        "admin-api": []
      },
      "outbound": { "vectordb": ["spiffe://example.org/ns/rag/sa/vectordb"] }
    }
  ]
}"#;

fn toml_err(text: &str) -> String {
    parse_policy_file_as(text, Format::Toml)
        .expect_err(text)
        .to_string()
}

fn json_err(text: &str) -> String {
    parse_policy_file_as(text, Format::Json)
        .expect_err(text)
        .to_string()
}

#[test]
fn toml_and_json_parse_to_equal_results() {
    let from_toml = parse_policy_file(TOML).expect("toml");
    let from_json = parse_policy_file(JSON).expect("json");
    assert_eq!(from_toml, from_json);
    assert_eq!(from_toml.len(), 2);

    let vectordb = &from_toml[0];
    assert_eq!(
        vectordb.spiffe_id.as_str(),
        "spiffe://example.org/ns/rag/sa/vectordb"
    );
    assert_eq!(vectordb.version, 0);
    assert_eq!(
        vectordb.inbound["http"][0].as_str(),
        "spiffe://example.org/ns/rag/sa/retriever"
    );
    assert_eq!(
        vectordb.outbound["llm"][0].as_str(),
        "spiffe://example.org/ns/rag/sa/llm"
    );
    assert!(from_toml[1].inbound["admin-api"].is_empty());
}

#[test]
fn sniffing() {
    assert_eq!(Format::sniff(" \n\t{"), Format::Json);
    assert_eq!(Format::sniff("[[workload]]"), Format::Toml);
    assert_eq!(Format::sniff(""), Format::Toml);
}

#[test]
fn pattern_errors_name_the_key_path() {
    let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/a"

[[workload]]
spiffe_id = "spiffe://example.org/b"
inbound.http = ["spiffe://x/a*b"]
"#;
    assert_eq!(
        toml_err(text),
        "workload[1].inbound.http[0]: \"spiffe://x/a*b\": '*' must be a whole path segment \
         (found \"a*b\"); partial globs are not supported"
    );
    let json = r#"{"workload":[{"spiffe_id":"spiffe://example.org/a"},
        {"spiffe_id":"spiffe://example.org/b","inbound":{"http":["spiffe://x/a*b"]}}]}"#;
    assert_eq!(json_err(json), toml_err(text));

    let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/a"
outbound.llm = ["spiffe://example.org/ok", "spiffe://*/a"]
"#;
    assert_eq!(
        toml_err(text),
        "workload[0].outbound.llm[1]: \"spiffe://*/a\": wildcards are not allowed in the trust \
         domain; trust domains match exactly"
    );
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/a"
inbund.http = ["spiffe://example.org/b"]
"#;
    assert_eq!(
        toml_err(text),
        "workload[0].inbund: unknown key (expected one of \"spiffe_id\", \"mode\", \"inbound\", \"outbound\", \"route\")"
    );
    assert_eq!(
        toml_err("[[workloads]]\nspiffe_id = \"spiffe://example.org/a\"\n"),
        "workloads: unknown key (expected \"workload\")"
    );
    assert_eq!(
        json_err(r#"{"workload":[{"spiffe_id":"spiffe://example.org/a","version":3}]}"#),
        "workload[0].version: unknown key (expected one of \"spiffe_id\", \"mode\", \"inbound\", \"outbound\", \"route\")"
    );
}

#[test]
fn duplicate_workloads_are_rejected() {
    let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/a"

[[workload]]
spiffe_id = "spiffe://example.org/b"

[[workload]]
spiffe_id = "spiffe://EXAMPLE.org/a"
"#;
    assert_eq!(
        toml_err(text),
        "workload[2].spiffe_id: \"spiffe://example.org/a\" is already defined by workload[0]"
    );
}

#[test]
fn json_duplicate_keys_are_rejected() {
    let json = r#"{"workload":[{"spiffe_id":"spiffe://example.org/a",
        "inbound":{"http":["spiffe://example.org/b"],"http":[]}}]}"#;
    let err = json_err(json);
    assert!(
        err.starts_with("invalid JSON: duplicate key \"http\""),
        "{err}"
    );
}

#[test]
fn listener_names_are_restricted() {
    let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/a"
inbound."bad name" = []
"#;
    assert_eq!(
        toml_err(text),
        "workload[0].inbound.\"bad name\": listener name contains ' ', but only A-Z, a-z, 0-9, \
         '_' and '-' are allowed"
    );
    let long = "x".repeat(65);
    let text =
        format!("[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\noutbound.{long} = []\n");
    assert_eq!(
        toml_err(&text),
        format!(
            "workload[0].outbound.{long}: listener name is 65 bytes long, but at most 64 are allowed"
        )
    );
    assert_eq!(
        json_err(r#"{"workload":[{"spiffe_id":"spiffe://example.org/a","inbound":{"":[]}}]}"#),
        "workload[0].inbound.\"\": listener name is empty"
    );
}

#[test]
fn spiffe_id_errors() {
    assert_eq!(
        toml_err("[[workload]]\ninbound.http = []\n"),
        "workload[0].spiffe_id: missing (required)"
    );
    assert_eq!(
        toml_err("[[workload]]\nspiffe_id = \"spiffe://example.org\"\n"),
        "workload[0].spiffe_id: \"spiffe://example.org\" names a trust domain, not a workload \
         (a path is required)"
    );
    assert_eq!(
        toml_err("[[workload]]\nspiffe_id = \"https://example.org/a\"\n"),
        "workload[0].spiffe_id: \"https://example.org/a\": the scheme of a SPIFFE ID must be \
         \"spiffe\", not \"https\""
    );
    // A workload's own ID is never a pattern.
    let err = toml_err("[[workload]]\nspiffe_id = \"spiffe://example.org/*\"\n");
    assert!(
        err.starts_with("workload[0].spiffe_id: \"spiffe://example.org/*\": "),
        "{err}"
    );
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(
        toml_err(
            "[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\ninbound.http = \"spiffe://example.org/b\"\n"
        ),
        "workload[0].inbound.http: expected an array of SPIFFE ID patterns, found a string"
    );
    assert_eq!(
        toml_err("[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\ninbound.http = [1]\n"),
        "workload[0].inbound.http[0]: expected a SPIFFE ID pattern string, found an integer"
    );
    assert_eq!(
        json_err(
            r#"{"workload":[{"spiffe_id":"spiffe://example.org/a","inbound":{"http":[null]}}]}"#
        ),
        "workload[0].inbound.http[0]: expected a SPIFFE ID pattern string, found null"
    );
    assert_eq!(
        toml_err("[[workload]]\nspiffe_id = 3\n"),
        "workload[0].spiffe_id: expected a SPIFFE ID string, found an integer"
    );
    assert_eq!(
        toml_err("workload = \"x\"\n"),
        "workload: expected an array of tables ([[workload]]), found a string"
    );
    assert_eq!(
        json_err("[]"),
        "(top level): expected a table, found an array"
    );
    assert_eq!(
        toml_err("[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\ninbound = [\"x\"]\n"),
        "workload[0].inbound: expected a table of listener name -> patterns, found an array"
    );
}

#[test]
fn missing_and_empty_files() {
    assert_eq!(toml_err(""), "workload: missing (required)");
    assert_eq!(json_err("{}"), "workload: missing (required)");
    assert_eq!(parse_policy_file(r#"{"workload": []}"#), Ok(vec![]));
}

#[test]
fn syntax_errors_say_which_format() {
    assert!(toml_err("[[workload]\n").starts_with("invalid TOML: "));
    assert!(json_err("{\"workload\": [").starts_with("invalid JSON: "));
}

#[test]
fn to_toml_round_trips() {
    let mut policies = parse_policy_file(TOML).expect("toml");
    policies[0].version = 4;
    policies[0].updated_by = Some("spiffe://example.org/warden/admin".into());
    policies[0].updated_at_unix_ms = Some(1_700_000_000_000);
    let text = to_toml(&policies);
    assert!(
        text.starts_with(
            "# version = 4\n\
             # updated_by = \"spiffe://example.org/warden/admin\"\n\
             # updated_at_unix_ms = 1700000000000\n\
             [[workload]]\n\
             spiffe_id = \"spiffe://example.org/ns/rag/sa/vectordb\"\n\
             inbound.http = [\"spiffe://example.org/ns/rag/sa/retriever\"]\n"
        ),
        "{text}"
    );
    assert!(text.contains("inbound.admin-api = []\n"), "{text}");
    let back = parse_policy_file(&text).expect("to_toml output must parse");
    // Metadata is carried as comments only; the rules survive exactly.
    let mut expected = policies.clone();
    expected[0].version = 0;
    expected[0].updated_by = None;
    expected[0].updated_at_unix_ms = None;
    assert_eq!(back, expected);
    assert_eq!(policies[1].to_toml(), to_toml(&policies[1..]));
}

#[test]
fn routes_parse_round_trip_and_name_their_errors() {
    let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/ns/rag/sa/retriever"
inbound.http = ["spiffe://example.org/ns/rag/sa/app"]

[[workload.route]]
listener = "http"
path_prefix = "/docs/finance/"
methods = ["GET", "POST"]
peers = ["spiffe://example.org/ns/rag/sa/app"]
users = { jwt = "corp-idp", claims = { groups = ["finance"] } }

[[workload.route]]
listener = "http"
path_prefix = "/health"
"#;
    let policies = parse_policy_file(text).expect("valid");
    let p = &policies[0];
    assert_eq!(p.routes.len(), 2);
    assert_eq!(p.routes[0].methods, ["GET", "POST"]);
    let users = p.routes[0].users.as_ref().expect("users");
    assert_eq!(users.jwt, "corp-idp");
    assert_eq!(users.claims["groups"], ["finance"]);
    // The written form parses back to the same policy, and so does the JSON model and
    // the wire form.
    assert_eq!(
        &parse_policy_file(&to_toml(&policies)).expect("round trip")[0],
        p
    );
    let json = serde_json::to_string(p).expect("json");
    assert_eq!(
        &serde_json::from_str::<WorkloadPolicy>(&json).expect("json"),
        p
    );
    assert_eq!(
        &crate::wire::from_proto(&crate::wire::to_proto(p)).expect("wire"),
        p
    );

    let bad = text.replace("/docs/finance/", "/docs/../finance/");
    let e = parse_policy_file(&bad).expect_err("not normalized");
    assert!(
        e.to_string()
            .starts_with("workload[0].route[0].path_prefix:"),
        "{e}"
    );
    let bad = text.replace(
        "listener = \"http\"\npath_prefix = \"/health\"",
        "path_prefix = \"/health\"",
    );
    let e = parse_policy_file(&bad).expect_err("no listener");
    assert_eq!(
        e.to_string(),
        "workload[0].route[1].listener: missing (required)"
    );
    let bad = text.replace("methods = [", "method = [");
    let e = parse_policy_file(&bad).expect_err("unknown key");
    assert!(
        e.to_string()
            .starts_with("workload[0].route[0].method: unknown key"),
        "{e}"
    );
}

#[test]
fn mode_parses_round_trips_and_names_its_errors() {
    let text = "[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\nmode = \"audit\"\ninbound.http = []\n";
    let p = parse_policy_file(text).expect("audit mode");
    assert_eq!(p[0].mode, crate::Mode::Audit);
    let written = to_toml(&p);
    assert!(written.contains("mode = \"audit\"\n"), "{written}");
    assert_eq!(parse_policy_file(&written).expect("round trip"), p);
    let json = r#"{"workload":[{"spiffe_id":"spiffe://example.org/a","mode":"audit"}]}"#;
    assert_eq!(
        parse_policy_file(json).expect("json")[0].mode,
        crate::Mode::Audit
    );
    // Enforce is the default and is not written out.
    let enforce = parse_policy_file(
        "[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\nmode = \"enforce\"\n",
    )
    .expect("enforce");
    assert_eq!(enforce[0].mode, crate::Mode::Enforce);
    assert!(!to_toml(&enforce).contains("mode"));
    assert_eq!(
        toml_err("[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\nmode = \"dry-run\"\n"),
        "workload[0].mode: \"dry-run\": expected \"enforce\" or \"audit\""
    );
    assert_eq!(
        toml_err("[[workload]]\nspiffe_id = \"spiffe://example.org/a\"\nmode = 1\n"),
        "workload[0].mode: expected \"enforce\" or \"audit\", found an integer"
    );
}
