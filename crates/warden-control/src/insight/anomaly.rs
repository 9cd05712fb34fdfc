//! The anomaly rules, run on the edges the sidecars report. Pure: time is passed in, so a
//! test can run hours of synthetic traffic in milliseconds.
//!
//! Counting happens per window (`[anomaly] window`); when a window closes ([`Detector::tick`])
//! each rule looks at what the window saw:
//!
//! - `new_edge`: a caller -> callee pair whose first allowed (or audit-mode would-deny)
//!   decision falls after the learning window (`learning`, counted from the control plane's
//!   start). Denied attempts are `deny_burst`'s business.
//! - `rate_spike`: a pair's decisions in the window exceed both `spike_floor` and
//!   `spike_factor` x its moving baseline (an exponentially weighted mean over about
//!   `baseline_windows` windows). One anomaly per episode: the pair must fall back under
//!   the threshold before it can fire again. Only pairs tracked for `baseline_windows`
//!   windows are judged (a brand-new pair is `new_edge`'s).
//! - `deny_burst`: one identity's denied decisions in the window, summed over every
//!   sidecar, reach `deny_burst` and exceed `deny_factor` x its own baseline (0 for an
//!   identity never denied before): probing, lateral movement attempts.
//!
//! Nothing fires until the detector has run `baseline_windows` windows, so a restart does
//! not flag the whole mesh. Counts of both ends of a connection add up (each sidecar reports
//! its side), consistently, so baselines and thresholds are in those units.
//!
//! Quarantine is never decided on one other workload's word: a report is the reporter's
//! claim about its peer, so a compromised workload could otherwise have anyone quarantined.
//! The response is `quarantine` only when the evidence in the window came from the
//! offender's own sidecar or from at least two distinct reporting workloads, and the
//! offender is not a protected identity (the admins); otherwise the anomaly is an alert
//! that says why.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::edges::{OTHER, Observation, Verdict};

/// What the control plane does about an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Metric, audit event, `warden policy anomalies`.
    Alert,
    /// All of that, and the offending identity is quarantined.
    Quarantine,
}

impl Response {
    pub fn as_str(self) -> &'static str {
        match self {
            Response::Alert => "alert",
            Response::Quarantine => "quarantine",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    NewEdge,
    RateSpike,
    DenyBurst,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewEdge => "new_edge",
            Kind::RateSpike => "rate_spike",
            Kind::DenyBurst => "deny_burst",
        }
    }
}

/// Which rules run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds {
    pub new_edge: bool,
    pub rate_spike: bool,
    pub deny_burst: bool,
}

/// `[anomaly]` of the control-plane config.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyConfig {
    pub response: Response,
    pub learning: Duration,
    pub window: Duration,
    pub kinds: Kinds,
    pub spike_factor: f64,
    pub spike_floor: u64,
    pub baseline_windows: u32,
    pub deny_burst: u64,
    pub deny_factor: f64,
    /// Pairs and identities tracked; past it, new ones are not (counted).
    pub max_tracked: usize,
    /// Anomalies kept for `warden policy anomalies` (oldest dropped first).
    pub max_kept: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            response: Response::Alert,
            learning: Duration::from_secs(3600),
            window: Duration::from_secs(60),
            kinds: Kinds {
                new_edge: true,
                rate_spike: true,
                deny_burst: true,
            },
            spike_factor: 5.0,
            spike_floor: 100,
            baseline_windows: 10,
            deny_burst: 20,
            deny_factor: 5.0,
            max_tracked: 100_000,
            max_kept: 1000,
        }
    }
}

/// One anomaly, as listed and audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: Kind,
    /// The identity it is about: the caller of the pair, the denied identity.
    pub workload: Arc<str>,
    /// The callee; `*` for deny_burst.
    pub peer: Arc<str>,
    pub detail: String,
    pub at_ms: u64,
    pub response: Response,
}

/// Distinct reporters seen in a window, up to what the corroboration rule needs.
#[derive(Debug, Default, Clone)]
struct Reporters(Vec<Arc<str>>);

impl Reporters {
    fn add(&mut self, r: &Arc<str>) {
        if self.0.len() < 2 && !self.0.iter().any(|x| x == r) {
            self.0.push(r.clone());
        }
    }

    /// The evidence is the offender's own sidecar, or two workloads agree.
    fn corroborate(&self, offender: &str) -> bool {
        self.0.len() >= 2 || self.0.iter().any(|r| &**r == offender)
    }
}

#[derive(Debug, Default)]
struct PairState {
    /// Traffic (allow or would-deny) has been seen on this pair.
    flowed: bool,
    /// It first flowed in the current window.
    new_this_window: bool,
    /// A new edge waiting (this many more windows) for the caller's own sidecar to report
    /// it, before it is reported as an alert only: the two ends of a connection report in
    /// their own rhythm, so the caller's report may land a window later.
    pending: u8,
    pending_reporters: Reporters,
    count: u64,
    baseline: f64,
    windows: u32,
    spiking: bool,
    reporters: Reporters,
}

#[derive(Debug, Default)]
struct DenyState {
    count: u64,
    baseline: f64,
    bursting: bool,
    reporters: Reporters,
}

/// Windows a new edge waits for corroboration before it is an alert only.
const PENDING_WINDOWS: u8 = 3;

/// The rules' state: per pair and per denied identity, bounded by `max_tracked`.
#[derive(Debug)]
pub struct Detector {
    config: AnomalyConfig,
    started_ms: u64,
    window_start_ms: u64,
    windows: u32,
    pairs: HashMap<(Arc<str>, Arc<str>), PairState>,
    denied: HashMap<Arc<str>, DenyState>,
    protected: HashSet<String>,
    /// Observations not tracked because the bound was reached.
    untracked: u64,
}

impl Detector {
    /// `protected`: identities never quarantined automatically (the admins).
    pub fn new(config: AnomalyConfig, protected: HashSet<String>, now_ms: u64) -> Self {
        Self {
            config,
            started_ms: now_ms,
            window_start_ms: now_ms,
            windows: 0,
            pairs: HashMap::new(),
            denied: HashMap::new(),
            protected,
            untracked: 0,
        }
    }

    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Counts one reported edge of `reporter`'s sidecar into the current window.
    pub fn observe(&mut self, reporter: &Arc<str>, obs: &Observation, now_ms: u64) {
        let (caller, callee) = obs.key.caller_callee();
        if caller == OTHER || callee == OTHER {
            return;
        }
        let tracked = self.pairs.len() + self.denied.len();
        let key = (Arc::from(caller), Arc::from(callee));
        let pair = match self.pairs.get_mut(&key) {
            Some(p) => Some(p),
            None if tracked < self.config.max_tracked => Some(self.pairs.entry(key).or_default()),
            None => None,
        };
        let Some(pair) = pair else {
            self.untracked += obs.count;
            return;
        };
        pair.count = pair.count.saturating_add(obs.count);
        pair.reporters.add(reporter);
        if obs.verdict != Verdict::Deny && !pair.flowed {
            pair.flowed = true;
            pair.new_this_window =
                now_ms >= self.started_ms + self.config.learning.as_millis() as u64;
        }
        if obs.verdict == Verdict::Deny {
            let id: Arc<str> = Arc::from(caller);
            let tracked = self.pairs.len() + self.denied.len();
            let state = match self.denied.get_mut(&id) {
                Some(s) => Some(s),
                None if tracked < self.config.max_tracked => {
                    Some(self.denied.entry(id).or_default())
                }
                None => None,
            };
            match state {
                Some(s) => {
                    s.count = s.count.saturating_add(obs.count);
                    s.reporters.add(reporter);
                }
                None => self.untracked += obs.count,
            }
        }
    }

    /// Closes every window that has ended by `now_ms` and returns what the rules found.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Anomaly> {
        let window = (self.config.window.as_millis() as u64).max(1);
        let mut found = Vec::new();
        while now_ms >= self.window_start_ms + window {
            self.window_start_ms += window;
            found.extend(self.close_window(self.window_start_ms));
            // A control plane that slept through many windows catches up without running
            // the rules once per empty window.
            if now_ms >= self.window_start_ms + 100 * window {
                self.window_start_ms = now_ms - (now_ms - self.window_start_ms) % window;
            }
        }
        found
    }

    fn response_for(
        &self,
        offender: &str,
        reporters: &Reporters,
    ) -> (Response, Option<&'static str>) {
        if self.config.response == Response::Alert {
            return (Response::Alert, None);
        }
        if self.protected.contains(offender) {
            return (Response::Alert, Some("not quarantined: an admin identity"));
        }
        if !reporters.corroborate(offender) {
            return (
                Response::Alert,
                Some("not quarantined: reported by one other workload only"),
            );
        }
        (Response::Quarantine, None)
    }

    fn close_window(&mut self, at_ms: u64) -> Vec<Anomaly> {
        self.windows = self.windows.saturating_add(1);
        let warm = self.windows > self.config.baseline_windows;
        let alpha = 2.0 / (f64::from(self.config.baseline_windows) + 1.0);
        let c = self.config.clone();
        let mut fired: Vec<Finding> = Vec::new();
        for ((caller, callee), p) in &mut self.pairs {
            if p.new_this_window && c.kinds.new_edge && warm {
                p.pending = PENDING_WINDOWS;
                p.pending_reporters = Reporters::default();
            }
            p.new_this_window = false;
            if p.pending > 0 {
                for r in &p.reporters.0 {
                    p.pending_reporters.add(r);
                }
                let settled = c.response == Response::Alert
                    || p.pending_reporters.corroborate(caller)
                    || p.pending == 1;
                if settled {
                    p.pending = 0;
                    fired.push(Finding {
                        kind: Kind::NewEdge,
                        workload: caller.clone(),
                        peer: callee.clone(),
                        detail: format!(
                            "{caller} -> {callee} first seen after the learning window"
                        ),
                        reporters: std::mem::take(&mut p.pending_reporters),
                    });
                } else {
                    p.pending -= 1;
                }
            }
            let count = p.count as f64;
            let threshold = c.spike_factor * p.baseline;
            let judged = warm && p.windows >= c.baseline_windows;
            if judged && c.kinds.rate_spike && p.count > c.spike_floor && count > threshold {
                if !p.spiking {
                    fired.push(Finding {
                        kind: Kind::RateSpike,
                        workload: caller.clone(),
                        peer: callee.clone(),
                        detail: format!(
                            "{caller} -> {callee}: {} decisions in a window, baseline {:.1} (factor {})",
                            p.count, p.baseline, c.spike_factor
                        ),
                        reporters: p.reporters.clone(),
                    });
                }
                p.spiking = true;
            } else {
                p.spiking = false;
            }
            p.baseline += alpha * (count - p.baseline);
            p.windows = p.windows.saturating_add(1);
            p.count = 0;
            p.reporters = Reporters::default();
        }
        for (id, d) in &mut self.denied {
            let count = d.count as f64;
            let threshold = c.deny_factor * d.baseline;
            if warm && c.kinds.deny_burst && d.count >= c.deny_burst && count > threshold {
                if !d.bursting {
                    fired.push(Finding {
                        kind: Kind::DenyBurst,
                        workload: id.clone(),
                        peer: Arc::from("*"),
                        detail: format!(
                            "{id} denied {} times in a window, baseline {:.1}",
                            d.count, d.baseline
                        ),
                        reporters: d.reporters.clone(),
                    });
                }
                d.bursting = true;
            } else {
                d.bursting = false;
            }
            d.baseline += alpha * (count - d.baseline);
            d.count = 0;
            d.reporters = Reporters::default();
        }
        // Identities no longer denied at all are forgotten once their baseline is gone.
        self.denied.retain(|_, d| d.baseline >= 0.01 || d.bursting);
        fired.sort_by(|a, b| {
            (a.kind.as_str(), &a.workload, &a.peer).cmp(&(b.kind.as_str(), &b.workload, &b.peer))
        });
        fired
            .into_iter()
            .map(|f| {
                let (response, why) = self.response_for(&f.workload, &f.reporters);
                Anomaly {
                    kind: f.kind,
                    detail: match why {
                        Some(why) => format!("{}; {why}", f.detail),
                        None => f.detail,
                    },
                    workload: f.workload,
                    peer: f.peer,
                    at_ms,
                    response,
                }
            })
            .collect()
    }
}

/// What a rule found, before the response is decided.
struct Finding {
    kind: Kind,
    workload: Arc<str>,
    peer: Arc<str>,
    detail: String,
    reporters: Reporters,
}

#[cfg(test)]
#[path = "anomaly_tests.rs"]
mod tests;
