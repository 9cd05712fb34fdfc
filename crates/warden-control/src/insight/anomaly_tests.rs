//! The rules on synthetic traffic. Time is simulated: minutes of steady traffic run in
//! milliseconds, and no test depends on the machine's speed.

use super::*;
use crate::insight::edges::EdgeKey;
use warden_policy::Direction;

fn id(p: &str) -> Arc<str> {
    Arc::from(format!("spiffe://example.org/{p}").as_str())
}

fn obs(
    reporter: &Arc<str>,
    direction: Direction,
    peer: &Arc<str>,
    verdict: Verdict,
    count: u64,
) -> Observation {
    Observation {
        key: EdgeKey {
            workload: reporter.clone(),
            direction,
            listener: "http".into(),
            peer: (**peer).into(),
            http: false,
            route: None,
        },
        verdict,
        count,
    }
}

fn config() -> AnomalyConfig {
    AnomalyConfig {
        window: Duration::from_secs(1),
        learning: Duration::from_secs(30),
        baseline_windows: 10,
        ..AnomalyConfig::default()
    }
}

/// Deterministic noise (xorshift), so a failure reproduces.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `base` +- `pct` percent.
    fn around(&mut self, base: u64, pct: u64) -> u64 {
        let span = base * pct / 100;
        base - span + self.next() % (2 * span + 1)
    }
}

/// A connection between two sidecars under the control plane: both report it.
fn both_ends(
    d: &mut Detector,
    caller: &Arc<str>,
    callee: &Arc<str>,
    verdict: Verdict,
    n: u64,
    at: u64,
) {
    d.observe(
        caller,
        &obs(caller, Direction::Outbound, callee, verdict, n),
        at,
    );
    d.observe(
        callee,
        &obs(callee, Direction::Inbound, caller, verdict, n),
        at,
    );
}

/// Ten minutes of steady traffic (20 edges with rates from 5 to 400 per window, +-40 %
/// noise, reports every 250 ms at the sidecars' own phase, a client denied 30 times a window
/// throughout) compressed into simulated time: no anomaly of any kind.
#[test]
fn ten_minutes_of_steady_noisy_traffic_raise_nothing() {
    let mut d = Detector::new(config(), HashSet::new(), 0);
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let edges: Vec<(Arc<str>, Arc<str>, u64)> = (0..20)
        .map(|i| (id(&format!("c{i}")), id(&format!("s{}", i % 7)), 5 + i * 20))
        .collect();
    let denied = id("misconfigured");
    let mut found = Vec::new();
    for step in 0..(600 * 4) {
        let now = step * 250 + noise.next() % 50;
        for (caller, callee, rate) in &edges {
            let n = noise.around(rate.div_ceil(4), 40);
            both_ends(&mut d, caller, callee, Verdict::Allow, n, now);
        }
        let n = noise.around(8, 40);
        d.observe(
            &id("s0"),
            &obs(&id("s0"), Direction::Inbound, &denied, Verdict::Deny, n),
            now,
        );
        found.extend(d.tick(now));
    }
    assert!(found.is_empty(), "false alarms: {found:#?}");
}

#[test]
fn new_edge_fires_once_after_learning_and_never_during_it() {
    let mut d = Detector::new(config(), HashSet::new(), 0);
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut found = Vec::new();
    for s in 0..120u64 {
        let now = s * 1000 + 500;
        if s >= 5 {
            both_ends(&mut d, &a, &b, Verdict::Allow, 10, now);
        }
        if s >= 100 {
            // Audit mode's would-deny is traffic that flowed, so it counts as an edge.
            both_ends(&mut d, &c, &b, Verdict::WouldDeny, 10, now);
        }
        found.extend(d.tick(now));
    }
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, Kind::NewEdge);
    assert_eq!((&*found[0].workload, &*found[0].peer), (&*c, &*b));
    assert_eq!(found[0].response, Response::Alert);
}

#[test]
fn a_denied_first_contact_is_not_a_new_edge() {
    let mut d = Detector::new(config(), HashSet::new(), 0);
    let (x, b) = (id("x"), id("b"));
    let mut found = Vec::new();
    for s in 0..60u64 {
        let now = s * 1000 + 500;
        if s >= 40 {
            d.observe(&b, &obs(&b, Direction::Inbound, &x, Verdict::Deny, 1), now);
        }
        found.extend(d.tick(now));
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn rate_spike_fires_once_per_episode_above_factor_and_floor() {
    let mut d = Detector::new(config(), HashSet::new(), 0);
    let (a, b) = (id("a"), id("b"));
    let mut found = Vec::new();
    let mut noise = Noise(7);
    for s in 0..200u64 {
        let now = s * 1000 + 500;
        let rate = match s {
            60..=64 | 150..=151 => 1000,
            _ => noise.around(50, 20),
        };
        both_ends(&mut d, &a, &b, Verdict::Allow, rate, now);
        found.extend(d.tick(now));
    }
    let spikes: Vec<_> = found.iter().filter(|x| x.kind == Kind::RateSpike).collect();
    assert_eq!(spikes.len(), 2, "one per episode: {found:#?}");
    assert_eq!((&*spikes[0].workload, &*spikes[0].peer), (&*a, &*b));
    assert!(
        spikes[0].detail.contains("2000 decisions"),
        "{}",
        spikes[0].detail
    );
}

#[test]
fn a_spike_under_the_floor_is_not_an_anomaly() {
    let mut d = Detector::new(config(), HashSet::new(), 0);
    let (a, b) = (id("a"), id("b"));
    let mut found = Vec::new();
    for s in 0..80u64 {
        let now = s * 1000 + 500;
        let rate = if s == 60 { 40 } else { 2 };
        both_ends(&mut d, &a, &b, Verdict::Allow, rate, now);
        found.extend(d.tick(now));
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn deny_burst_fires_for_a_sudden_burst_and_not_for_a_steady_denier() {
    let mut d = Detector::new(config(), HashSet::new(), 0);
    let (scanner, steady) = (id("scanner"), id("steady"));
    let targets: Vec<Arc<str>> = (0..5).map(|i| id(&format!("svc{i}"))).collect();
    let mut found = Vec::new();
    for s in 0..100u64 {
        let now = s * 1000 + 500;
        for t in &targets {
            d.observe(
                t,
                &obs(t, Direction::Inbound, &steady, Verdict::Deny, 6),
                now,
            );
            if s == 70 {
                d.observe(
                    t,
                    &obs(t, Direction::Inbound, &scanner, Verdict::Deny, 20),
                    now,
                );
            }
        }
        found.extend(d.tick(now));
    }
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, Kind::DenyBurst);
    assert_eq!((&*found[0].workload, &*found[0].peer), (&*scanner, "*"));
}

#[test]
fn quarantine_needs_the_offenders_own_sidecar_or_two_reporters_and_spares_admins() {
    let cfg = AnomalyConfig {
        response: Response::Quarantine,
        ..config()
    };
    let admin = id("admin");
    let protected: HashSet<String> = [admin.to_string()].into();
    let mut d = Detector::new(cfg, protected, 0);
    let (lone, own, admin_edge, b, c) = (id("lone"), id("own"), admin.clone(), id("b"), id("c"));
    let mut found = Vec::new();
    for s in 0..60u64 {
        let now = s * 1000 + 500;
        if s >= 50 {
            // Only the callee says `lone` called it: a claim, not proof.
            d.observe(
                &b,
                &obs(&b, Direction::Inbound, &lone, Verdict::Allow, 3),
                now,
            );
            // `own`'s own sidecar reports the call.
            d.observe(
                &own,
                &obs(&own, Direction::Outbound, &c, Verdict::Allow, 3),
                now,
            );
            both_ends(&mut d, &admin_edge, &c, Verdict::Allow, 3, now);
        }
        found.extend(d.tick(now));
    }
    let by = |w: &Arc<str>| found.iter().find(|x| &x.workload == w).expect("anomaly");
    assert_eq!(by(&lone).response, Response::Alert);
    assert!(
        by(&lone).detail.contains("one other workload"),
        "{}",
        by(&lone).detail
    );
    assert_eq!(by(&own).response, Response::Quarantine);
    assert_eq!(by(&admin_edge).response, Response::Alert);
    assert!(by(&admin_edge).detail.contains("admin"));
}

#[test]
fn tracking_is_bounded() {
    let cfg = AnomalyConfig {
        max_tracked: 100,
        ..config()
    };
    let mut d = Detector::new(cfg, HashSet::new(), 0);
    let b = id("b");
    for i in 0..10_000 {
        d.observe(
            &b,
            &obs(
                &b,
                Direction::Inbound,
                &id(&format!("p{i}")),
                Verdict::Deny,
                1,
            ),
            10,
        );
    }
    assert!(d.pairs.len() + d.denied.len() <= 100);
    assert!(d.untracked() > 0);
}

/// The callee's report may come a window before the caller's own: the new edge waits for
/// it, and is then a quarantine, not an alert.
#[test]
fn a_new_edge_waits_a_little_for_the_callers_own_report() {
    let cfg = AnomalyConfig {
        response: Response::Quarantine,
        ..config()
    };
    let mut d = Detector::new(cfg, HashSet::new(), 0);
    let (x, b) = (id("x"), id("b"));
    let mut found = Vec::new();
    for s in 0..60u64 {
        let now = s * 1000 + 500;
        if s == 50 {
            d.observe(&b, &obs(&b, Direction::Inbound, &x, Verdict::Allow, 1), now);
        }
        if s == 51 {
            d.observe(
                &x,
                &obs(&x, Direction::Outbound, &b, Verdict::Allow, 1),
                now,
            );
        }
        found.extend(d.tick(now));
    }
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].response, Response::Quarantine);
}
