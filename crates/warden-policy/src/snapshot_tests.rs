use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn pats(list: &[&str]) -> Vec<Pattern> {
    list.iter()
        .map(|s| Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

fn policy(inbound: &[(&str, &[&str])], outbound: &[(&str, &[&str])]) -> WorkloadPolicy {
    let mut p = WorkloadPolicy::new(id("spiffe://example.org/ns/rag/sa/vectordb"));
    for (name, list) in inbound {
        p.inbound.insert((*name).into(), pats(list));
    }
    for (name, list) in outbound {
        p.outbound.insert((*name).into(), pats(list));
    }
    p.version = 42;
    p.updated_by = Some("spiffe://example.org/warden/admin".into());
    p
}

fn allowed_by(d: Decision<'_>) -> Option<&str> {
    match d {
        Decision {
            allowed: true,
            would_deny: false,
            reason: Reason::Matched { rule },
        } => Some(rule),
        _ => None,
    }
}

const RETRIEVER: &str = "spiffe://example.org/ns/rag/sa/retriever";

#[test]
fn deny_all_denies_with_no_policy() {
    let snap = PolicySnapshot::deny_all();
    assert!(!snap.has_policy());
    assert_eq!(snap.source(), PolicySource::None);
    assert_eq!(snap.version(), 0);
    for direction in [Direction::Inbound, Direction::Outbound] {
        let d = snap.decide(direction, "http", &id(RETRIEVER));
        assert_eq!(
            d,
            Decision {
                allowed: false,
                would_deny: false,
                reason: Reason::NoPolicy
            }
        );
        assert_eq!(d.as_label(), "deny");
        assert_eq!(d.reason.as_label(), "no_policy");
    }
    let none = PolicySnapshot::compile(None, PolicySource::ControlPlane);
    assert_eq!(none.source(), PolicySource::ControlPlane);
    assert_eq!(
        none.decide(Direction::Inbound, "http", &id(RETRIEVER))
            .reason,
        Reason::NoPolicy
    );
    assert_eq!(
        PolicySnapshot::default()
            .decide(Direction::Inbound, "http", &id(RETRIEVER))
            .reason,
        Reason::NoPolicy
    );
}

#[test]
fn allows_a_matching_peer_and_reports_the_rule() {
    let p = policy(
        &[("http", &[RETRIEVER])],
        &[("llm", &["spiffe://example.org/ns/rag/sa/llm"])],
    );
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    assert_eq!(snap.version(), 42);
    assert_eq!(snap.source(), PolicySource::ControlPlane);
    assert_eq!(snap.updated_by(), Some("spiffe://example.org/warden/admin"));
    assert_eq!(snap.workload(), Some(&p.spiffe_id));

    let d = snap.decide(Direction::Inbound, "http", &id(RETRIEVER));
    assert_eq!(allowed_by(d), Some(RETRIEVER));
    assert_eq!(d.as_label(), "allow");
    assert_eq!(d.reason.as_label(), "allowed");

    let llm = id("spiffe://example.org/ns/rag/sa/llm");
    assert!(snap.decide(Direction::Outbound, "llm", &llm).allowed);
    // Directions are separate: the outbound rule does not admit the LLM inbound.
    assert_eq!(
        snap.decide(Direction::Inbound, "llm", &llm).reason,
        Reason::UnknownListener
    );
}

#[test]
fn each_deny_reason() {
    let p = policy(&[("http", &[RETRIEVER]), ("grpc", &[])], &[]);
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::Cache);
    let peer = id(RETRIEVER);
    let other = id("spiffe://example.org/ns/rag/sa/app");

    let cases = [
        (
            Direction::Inbound,
            "http",
            &other,
            Reason::NoMatch,
            "no_match",
        ),
        (
            Direction::Inbound,
            "grpc",
            &peer,
            Reason::EmptyAllowlist,
            "empty_allowlist",
        ),
        (
            Direction::Inbound,
            "nope",
            &peer,
            Reason::UnknownListener,
            "unknown_listener",
        ),
        (
            Direction::Outbound,
            "http",
            &peer,
            Reason::UnknownListener,
            "unknown_listener",
        ),
    ];
    for (direction, listener, who, reason, label) in cases {
        let d = snap.decide(direction, listener, who);
        assert!(!d.allowed, "{direction} {listener} {who}");
        assert_eq!(d.reason, reason, "{direction} {listener} {who}");
        assert_eq!(d.reason.as_label(), label);
    }
}

#[test]
fn an_empty_list_never_widens_access() {
    // An empty list next to a wildcard-free policy, and an empty list as the only rule:
    // neither admits anyone, including the workload itself.
    let p = policy(&[("http", &[])], &[("llm", &[])]);
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    for peer in [
        RETRIEVER,
        "spiffe://example.org/ns/rag/sa/vectordb",
        "spiffe://other.org/x",
    ] {
        let d = snap.decide(Direction::Inbound, "http", &id(peer));
        assert_eq!(d.reason, Reason::EmptyAllowlist);
        assert!(!d.allowed);
        assert!(!snap.decide(Direction::Outbound, "llm", &id(peer)).allowed);
    }
    let static_empty = PolicySnapshot::from_static(
        BTreeMap::from([("http".to_owned(), vec![])]),
        BTreeMap::new(),
    );
    assert_eq!(
        static_empty
            .decide(Direction::Inbound, "http", &id(RETRIEVER))
            .reason,
        Reason::EmptyAllowlist
    );
}

#[test]
fn exact_beats_wildcard() {
    let p = policy(
        &[(
            "http",
            &[
                "spiffe://example.org/ns/rag/**",
                "spiffe://example.org/ns/*/sa/retriever",
                RETRIEVER,
            ],
        )],
        &[],
    );
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    assert_eq!(
        allowed_by(snap.decide(Direction::Inbound, "http", &id(RETRIEVER))),
        Some(RETRIEVER)
    );
    // Among wildcards the more specific one is reported: literal, then `*`, then `/**`.
    assert_eq!(
        allowed_by(snap.decide(
            Direction::Inbound,
            "http",
            &id("spiffe://example.org/ns/rag/sa/other")
        )),
        Some("spiffe://example.org/ns/rag/**")
    );
    assert_eq!(
        allowed_by(snap.decide(
            Direction::Inbound,
            "http",
            &id("spiffe://example.org/ns/ops/sa/retriever")
        )),
        Some("spiffe://example.org/ns/*/sa/retriever")
    );
}

#[test]
fn single_star_is_exactly_one_segment() {
    let p = policy(&[("http", &["spiffe://example.org/ns/*/sa/x"])], &[]);
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    let decide = |s: &str| snap.decide(Direction::Inbound, "http", &id(s)).allowed;
    assert!(decide("spiffe://example.org/ns/a/sa/x"));
    assert!(!decide("spiffe://example.org/ns/sa/x"), "zero segments");
    assert!(!decide("spiffe://example.org/ns/a/b/sa/x"), "two segments");
    assert!(!decide("spiffe://example.org/ns/a/sa/x/y"));
    assert!(!decide("spiffe://example.org/ns/a/sa"));
}

#[test]
fn double_star_does_not_match_the_prefix_itself() {
    let p = policy(&[("http", &["spiffe://example.org/ns/rag/**"])], &[]);
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    let decide = |s: &str| snap.decide(Direction::Inbound, "http", &id(s));
    assert!(decide("spiffe://example.org/ns/rag/a").allowed);
    assert!(decide("spiffe://example.org/ns/rag/a/b").allowed);
    assert!(decide("spiffe://example.org/ns/rag/a/b/c").allowed);
    assert_eq!(
        decide("spiffe://example.org/ns/rag").reason,
        Reason::NoMatch
    );
    assert_eq!(decide("spiffe://example.org/ns").reason, Reason::NoMatch);
    assert_eq!(decide("spiffe://example.org").reason, Reason::NoMatch);
    assert_eq!(
        decide("spiffe://example.org/ns/ragged/a").reason,
        Reason::NoMatch
    );
}

#[test]
fn trust_domain_mismatch_with_same_path_denies() {
    let p = policy(
        &[(
            "http",
            &[
                RETRIEVER,
                "spiffe://example.org/ns/*/sa/web",
                "spiffe://example.org/ops/**",
            ],
        )],
        &[],
    );
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    for peer in [
        "spiffe://evil.org/ns/rag/sa/retriever",
        "spiffe://evil.org/ns/rag/sa/web",
        "spiffe://evil.org/ops/a",
        "spiffe://example.org.evil.org/ns/rag/sa/retriever",
    ] {
        let d = snap.decide(Direction::Inbound, "http", &id(peer));
        assert_eq!(d.reason, Reason::NoMatch, "{peer}");
    }
}

#[test]
fn snapshot_agrees_with_pattern_matches() {
    // The trie is an optimization of Pattern::matches; they must agree.
    let rules = [
        "spiffe://example.org/a",
        "spiffe://example.org/a/*",
        "spiffe://example.org/*/b",
        "spiffe://example.org/*/*/c",
        "spiffe://example.org/a/b/**",
        "spiffe://example.org/x/*/**",
        "spiffe://other.org/**",
    ];
    let peers = [
        "spiffe://example.org/a",
        "spiffe://example.org/a/b",
        "spiffe://example.org/a/b/c",
        "spiffe://example.org/a/b/c/d",
        "spiffe://example.org/q/b",
        "spiffe://example.org/q/r/c",
        "spiffe://example.org/x/y",
        "spiffe://example.org/x/y/z",
        "spiffe://example.org/z",
        "spiffe://example.org",
        "spiffe://other.org/a",
        "spiffe://other.org",
    ];
    for rule in rules {
        let p = policy(&[("l", &[rule])], &[]);
        let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
        let pattern = &pats(&[rule])[0];
        for peer in peers {
            let peer = id(peer);
            let d = snap.decide(Direction::Inbound, "l", &peer);
            assert_eq!(d.allowed, pattern.matches(&peer), "{rule} vs {peer}");
        }
    }
}

#[test]
fn from_static_is_inbound_only() {
    let snap = PolicySnapshot::from_static(
        BTreeMap::from([("http".to_owned(), pats(&[RETRIEVER]))]),
        BTreeMap::new(),
    );
    assert_eq!(snap.source(), PolicySource::Static);
    assert_eq!(snap.version(), 0);
    assert!(snap.has_policy());
    assert_eq!(snap.workload(), None);
    assert!(
        snap.decide(Direction::Inbound, "http", &id(RETRIEVER))
            .allowed
    );
    assert_eq!(
        snap.decide(Direction::Outbound, "http", &id(RETRIEVER))
            .reason,
        Reason::UnknownListener
    );
}

#[test]
fn static_outbound_rules_allow_exactly_the_listeners_server_id() {
    let llm = "spiffe://example.org/ns/rag/sa/llm";
    let snap = PolicySnapshot::from_static(
        BTreeMap::new(),
        BTreeMap::from([("llm".to_owned(), pats(&[llm]))]),
    );
    let d = snap.decide(Direction::Outbound, "llm", &id(llm));
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::Matched { rule: llm });
    assert!(
        !snap
            .decide(Direction::Outbound, "llm", &id(RETRIEVER))
            .allowed
    );
    assert_eq!(
        snap.decide(Direction::Outbound, "other", &id(llm)).reason,
        Reason::UnknownListener
    );
    assert!(!snap.decide(Direction::Inbound, "llm", &id(llm)).allowed);
}

#[test]
fn rules_are_readable_for_debugging() {
    let p = policy(
        &[("http", &[RETRIEVER, "spiffe://example.org/ns/*/sa/web"])],
        &[("llm", &[])],
    );
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    let inbound = snap.rules(Direction::Inbound);
    let texts: Vec<&str> = inbound["http"].iter().map(Pattern::as_str).collect();
    assert_eq!(texts, [RETRIEVER, "spiffe://example.org/ns/*/sa/web"]);
    assert!(snap.rules(Direction::Outbound)["llm"].is_empty());
    let dbg = format!("{snap:?}");
    assert!(dbg.contains("inbound_rules: 2"), "{dbg}");
}

#[test]
fn one_hundred_thousand_exact_entries() {
    let rules: Vec<Pattern> = (0..100_000)
        .map(|i| Pattern::parse(&format!("spiffe://example.org/ns/n{i}/sa/s{i}")).expect("valid"))
        .chain(pats(&["spiffe://example.org/team/*/**"]))
        .collect();
    let mut p = WorkloadPolicy::new(id("spiffe://example.org/ns/rag/sa/vectordb"));
    p.inbound.insert("http".into(), rules);
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);

    for i in [0, 1, 4_242, 99_999] {
        let peer = format!("spiffe://example.org/ns/n{i}/sa/s{i}");
        let d = snap.decide(Direction::Inbound, "http", &id(&peer));
        assert_eq!(allowed_by(d), Some(peer.as_str()));
    }
    for peer in [
        "spiffe://example.org/ns/n100000/sa/s100000",
        "spiffe://example.org/ns/n1/sa/s2",
        "spiffe://other.org/ns/n1/sa/s1",
    ] {
        assert_eq!(
            snap.decide(Direction::Inbound, "http", &id(peer)).reason,
            Reason::NoMatch,
            "{peer}"
        );
    }
    assert_eq!(
        allowed_by(snap.decide(
            Direction::Inbound,
            "http",
            &id("spiffe://example.org/team/a/b")
        )),
        Some("spiffe://example.org/team/*/**")
    );
}

#[test]
fn many_wildcards_across_trust_domains() {
    let mut list: Vec<String> = (0..2_000)
        .map(|i| format!("spiffe://td{}.org/ns/team{i}/**", i % 10))
        .collect();
    list.push("spiffe://td3.org/ns/*/sa/special".into());
    let refs: Vec<&str> = list.iter().map(String::as_str).collect();
    let p = policy(&[("http", &refs)], &[]);
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    let decide = |s: &str| allowed_by(snap.decide(Direction::Inbound, "http", &id(s)));
    assert_eq!(
        decide("spiffe://td7.org/ns/team1237/sa/x"),
        Some("spiffe://td7.org/ns/team1237/**")
    );
    assert_eq!(decide("spiffe://td8.org/ns/team1237/sa/x"), None);
    assert_eq!(
        decide("spiffe://td3.org/ns/team1237/sa/special"),
        Some("spiffe://td3.org/ns/*/sa/special")
    );
    assert_eq!(decide("spiffe://td3.org/ns/team1233"), None);
}

#[test]
fn reason_display() {
    assert_eq!(
        Reason::Matched { rule: RETRIEVER }.to_string(),
        format!("matched rule {RETRIEVER}")
    );
    assert_eq!(Reason::NoMatch.to_string(), "no rule matches the peer");
    assert_eq!(PolicySource::ControlPlane.as_str(), "control_plane");
}

#[test]
fn audit_mode_allows_what_would_be_denied_with_the_deny_reason() {
    let mut p = policy(&[("http", &[RETRIEVER]), ("empty", &[])], &[]);
    p.mode = crate::Mode::Audit;
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    assert_eq!(snap.mode(), crate::Mode::Audit);
    let stranger = id("spiffe://example.org/ns/x/sa/stranger");
    // Allowed by a rule: a plain allow.
    let d = snap.decide(Direction::Inbound, "http", &id(RETRIEVER));
    assert_eq!(
        (d.allowed, d.would_deny, d.as_label()),
        (true, false, "allow")
    );
    // Each deny reason, let through and labelled would_deny with that reason.
    for (listener, reason) in [
        ("http", Reason::NoMatch),
        ("empty", Reason::EmptyAllowlist),
        ("nope", Reason::UnknownListener),
    ] {
        let d = snap.decide(Direction::Inbound, listener, &stranger);
        assert_eq!(
            d,
            Decision {
                allowed: true,
                would_deny: true,
                reason
            },
            "{listener}"
        );
        assert_eq!(d.as_label(), "would_deny");
    }
    let d = snap.decide(Direction::Outbound, "llm", &stranger);
    assert!(d.would_deny && d.allowed);
    // No policy at all is not audit mode: deny.
    let none = PolicySnapshot::compile(None, PolicySource::ControlPlane);
    assert!(!none.decide(Direction::Inbound, "http", &stranger).allowed);
    // The same rules enforced deny.
    p.mode = crate::Mode::Enforce;
    let enforced = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    let d = enforced.decide(Direction::Inbound, "http", &stranger);
    assert_eq!((d.allowed, d.as_label()), (false, "deny"));
}

#[test]
fn quarantine_refuses_inbound_everywhere_and_the_quarantined_outbound_even_in_audit_mode() {
    let mut p = policy(
        &[("http", &[RETRIEVER])],
        &[("llm", &["spiffe://example.org/**"])],
    );
    p.mode = crate::Mode::Audit;
    let me = p.spiffe_id.as_str().to_owned();
    let snap =
        PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane).with_quarantine([RETRIEVER]);
    assert_eq!(snap.quarantined(), vec![RETRIEVER]);
    let d = snap.decide(Direction::Inbound, "http", &id(RETRIEVER));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            would_deny: false,
            reason: Reason::Quarantined
        }
    );
    assert_eq!(d.reason.as_label(), "quarantined");
    // Outbound to a quarantined server is the policy's business; our own outbound is not
    // refused unless we are quarantined ourselves.
    assert!(
        snap.decide(Direction::Outbound, "llm", &id(RETRIEVER))
            .allowed
    );
    let mut no_user = |_: &crate::UserRequirement| crate::UserCheck::Satisfied;
    let r = snap.decide_request("http", &id(RETRIEVER), "GET", "/", &mut no_user);
    assert_eq!(
        (r.allowed, r.reason),
        (false, crate::RequestReason::Quarantined)
    );
    let selfq = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane)
        .with_quarantine([me.as_str()]);
    let d = selfq.decide(Direction::Outbound, "llm", &id(RETRIEVER));
    assert_eq!((d.allowed, d.reason), (false, Reason::Quarantined));
    // Its inbound is not refused by its own quarantine.
    assert!(
        selfq
            .decide(Direction::Inbound, "http", &id(RETRIEVER))
            .allowed
    );
}

#[test]
fn audit_mode_lets_denied_requests_through_as_would_deny() {
    let text = r#"
[[workload]]
spiffe_id = "spiffe://example.org/ns/rag/sa/vectordb"
mode = "audit"
inbound.http = ["spiffe://example.org/**"]
[[workload.route]]
listener = "http"
path_prefix = "/public/"
"#;
    let p = crate::parse_policy_file(text).expect("policy").remove(0);
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    let mut users = |_: &crate::UserRequirement| crate::UserCheck::Satisfied;
    let ok = snap.decide_request("http", &id(RETRIEVER), "GET", "/public/x", &mut users);
    assert_eq!(
        (ok.allowed, ok.would_deny, ok.route),
        (true, false, Some(0))
    );
    let would = snap.decide_request("http", &id(RETRIEVER), "GET", "/private/x", &mut users);
    assert_eq!(
        (would.allowed, would.would_deny, would.reason),
        (true, true, crate::RequestReason::NoMatch)
    );
}

#[test]
fn route_issuers_are_compiled_per_listener_sorted_and_once_each() {
    let route = |listener: &str, path: &str, jwt: Option<&str>| crate::Route {
        listener: listener.into(),
        path_prefix: path.into(),
        methods: Vec::new(),
        peers: Vec::new(),
        users: jwt.map(|j| crate::UserRequirement {
            jwt: j.into(),
            claims: BTreeMap::new(),
        }),
    };
    let mut p = policy(&[("http", &[RETRIEVER]), ("api", &[RETRIEVER])], &[]);
    p.routes = vec![
        route("http", "/finance/", Some("okta")),
        route("http", "/hr/", Some("corp")),
        route("http", "/public/", None),
        route("http", "/finance/reports/", Some("okta")),
        route("api", "/", None),
    ];
    let snap = PolicySnapshot::compile(Some(&p), PolicySource::ControlPlane);
    assert_eq!(&*snap.route_issuers("http"), ["corp", "okta"]);
    assert!(
        snap.route_issuers("api").is_empty(),
        "no route asks for a user"
    );
    assert!(snap.route_issuers("none").is_empty());
    assert!(PolicySnapshot::deny_all().route_issuers("http").is_empty());
}
