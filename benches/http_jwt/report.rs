//! The Markdown report of the HTTP + JWT benchmark: the table per setup, the ratios against
//! the targets, and the per-round values.

use crate::*;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub(crate) struct Report<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) samples: BTreeMap<Setup, Vec<Sample>>,
    pub(crate) pooled: BTreeMap<(Setup, u32), Histogram<u64>>,
    pub(crate) checks: CheckRows,
    pub(crate) verify_us: Option<f64>,
    pub(crate) notes: Vec<String>,
    pub(crate) machine: Vec<(String, String)>,
}

impl Report<'_> {
    fn setups(&self) -> Vec<Setup> {
        self.samples.keys().copied().collect()
    }

    /// Median over rounds of `f` of one setup's measurement at `rate`.
    fn med(&self, s: Setup, rate: u32, f: impl Fn(&Lat) -> Option<f64>) -> Option<f64> {
        median(
            self.samples
                .get(&s)?
                .iter()
                .filter_map(|x| x.lat.get(&rate).and_then(&f))
                .collect(),
        )
    }

    /// Median over rounds of (setup - direct) of `f`, within each round.
    fn added(&self, s: Setup, rate: u32, f: impl Fn(&Lat) -> f64) -> Option<f64> {
        let direct = self.samples.get(&Setup::Direct)?;
        median(
            self.samples
                .get(&s)?
                .iter()
                .zip(direct)
                .filter_map(|(x, d)| Some(f(x.lat.get(&rate)?) - f(d.lat.get(&rate)?)))
                .collect(),
        )
    }

    /// A percentile of all of a setup's recorded requests at `rate`, every round pooled.
    fn pooled_q(&self, s: Setup, rate: u32, q: f64) -> Option<f64> {
        let h = self.pooled.get(&(s, rate))?;
        Some(h.value_at_quantile(q) as f64 / 1_000.0)
    }

    /// [`Report::pooled_q`] of the setup minus direct's.
    fn pooled_added(&self, s: Setup, rate: u32, q: f64) -> Option<f64> {
        Some(self.pooled_q(s, rate, q)? - self.pooled_q(Setup::Direct, rate, q)?)
    }

    pub(crate) fn render(&self) -> String {
        let mut o = String::new();
        let setups = self.setups();
        let both = setups.contains(&Setup::WardenHttp) && setups.contains(&Setup::EnvoyHttp);
        let _ = writeln!(o, "### HTTP listener with one JWT rule: Warden vs Envoy\n");
        for (k, v) in &self.machine {
            let _ = writeln!(o, "- {k}: {v}");
        }
        let _ = writeln!(
            o,
            "- rounds: {}; in each, every setup runs side by side and each rate is measured on every setup in turn (order reversed from one rate and round to the next); figures are medians over rounds; *added* = setup minus direct within the same round, percentile by percentile; CPU = utime + stime of the proxy process (`/proc/<pid>/stat`) over warm-up and measurement, divided by the requests sent",
            self.opts.rounds
        );
        if self.opts.quick {
            let _ = writeln!(
                o,
                "- **quick run** (smoke test): one short round, figures are indicative only"
            );
        }
        let _ = writeln!(o);
        if !self.checks.is_empty() {
            let _ = writeln!(
                o,
                "Same rule on both (checked every round before measuring, each case on a fresh connection; a refused request never reached the app):\n"
            );
            let _ = writeln!(o, "| request | expected | Warden | Envoy |");
            let _ = writeln!(o, "| --- | ---: | ---: | ---: |");
            let show = |v: Option<u16>| v.map_or("n/a".to_string(), |s| s.to_string());
            for (case, want, w, e) in &self.checks {
                let _ = writeln!(o, "| {case} | {want} | {} | {} |", show(*w), show(*e));
            }
            let _ = writeln!(o);
        }
        // The main table.
        let _ = write!(o, "| metric |");
        for s in &setups {
            let _ = write!(o, " {} |", s.name());
        }
        if both {
            let _ = write!(o, " Warden/Envoy (http+JWT) |");
        }
        let _ = writeln!(o);
        let _ = write!(o, "| --- |");
        for _ in &setups {
            let _ = write!(o, " ---: |");
        }
        if both {
            let _ = write!(o, " ---: |");
        }
        let _ = writeln!(o);
        let fmt = |v: Option<f64>, prec: usize| v.map_or("n/a".into(), |v| format!("{v:.prec$}"));
        for &rate in &self.opts.rates {
            type Row<'a> = (String, Box<dyn Fn(Setup) -> Option<f64> + 'a>, usize);
            let rows: Vec<Row> = vec![
                (
                    format!("latency p50 @ {rate} rps (µs)"),
                    Box::new(move |s| self.med(s, rate, |l| Some(l.p50))),
                    0,
                ),
                (
                    format!("latency p99 @ {rate} rps (µs)"),
                    Box::new(move |s| self.med(s, rate, |l| Some(l.p99))),
                    0,
                ),
                (
                    format!("latency p99.9 @ {rate} rps (µs)"),
                    Box::new(move |s| self.med(s, rate, |l| Some(l.p999))),
                    0,
                ),
                (
                    format!("**added** p50 @ {rate} rps (µs)"),
                    Box::new(move |s| self.added(s, rate, |l| l.p50)),
                    0,
                ),
                (
                    format!("**added** p99 @ {rate} rps (µs)"),
                    Box::new(move |s| self.added(s, rate, |l| l.p99)),
                    0,
                ),
                (
                    format!("**added** p99.9 @ {rate} rps (µs)"),
                    Box::new(move |s| self.added(s, rate, |l| l.p999)),
                    0,
                ),
                (
                    format!("latency p99 @ {rate} rps, all rounds pooled (µs)"),
                    Box::new(move |s| self.pooled_q(s, rate, 0.99)),
                    0,
                ),
                (
                    format!("**added** p99 @ {rate} rps, all rounds pooled (µs)"),
                    Box::new(move |s| self.pooled_added(s, rate, 0.99)),
                    0,
                ),
                (
                    format!("**proxy CPU per request** @ {rate} rps (µs)"),
                    Box::new(move |s| self.med(s, rate, |l| l.cpu_us)),
                    1,
                ),
                (
                    format!("achieved rate @ {rate} rps (rps)"),
                    Box::new(move |s| self.med(s, rate, |l| Some(l.achieved))),
                    0,
                ),
            ];
            for (label, f, prec) in rows {
                let _ = write!(o, "| {label} |");
                for &s in &setups {
                    let _ = write!(o, " {} |", fmt(f(s), prec));
                }
                if both {
                    let ratio = match (f(Setup::WardenHttp), f(Setup::EnvoyHttp)) {
                        (Some(w), Some(e)) if e > 0.0 => format!("{:.2}", w / e),
                        _ => "n/a".into(),
                    };
                    let _ = write!(o, " {ratio} |");
                }
                let _ = writeln!(o);
            }
        }
        let _ = writeln!(o);
        if both {
            self.targets(&mut o);
        }
        self.increments(&mut o);
        self.per_round(&mut o);
        if !self.notes.is_empty() {
            let _ = writeln!(o, "Notes from this run:\n");
            for n in &self.notes {
                let _ = writeln!(o, "- {n}");
            }
            let _ = writeln!(o);
        }
        o.trim_end().to_owned()
    }

    fn targets(&self, o: &mut String) {
        let has_tcp = self.samples.contains_key(&Setup::WardenTcp);
        let _ = writeln!(
            o,
            "| target (Warden http+JWT vs Envoy http+JWT) | this run | floor | met |"
        );
        let _ = writeln!(o, "| --- | ---: | --- | --- |");
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        for &rate in &self.opts.rates {
            let estimates: [(&str, Added); 2] = [
                ("median of per-round differences", &|s| {
                    self.added(s, rate, |l| l.p99)
                }),
                ("all rounds pooled", &|s| self.pooled_added(s, rate, 0.99)),
            ];
            for (how, added) in estimates {
                let (w, e) = (added(Setup::WardenHttp), added(Setup::EnvoyHttp));
                let floor = if has_tcp {
                    ratio(added(Setup::WardenTcp), e).map_or(String::new(), |f| {
                        format!(
                            "{f:.2} x: Warden tcp's added p99 (mTLS + relay, no HTTP, no token)"
                        )
                    })
                } else {
                    String::new()
                };
                let (shown, verdict) = match (w, e) {
                    (Some(w), Some(e)) if e > 0.0 && w >= 0.0 => (
                        format!("{:.2} x ({w:.0} vs {e:.0} µs)", w / e),
                        met(Some(w / e), 0.5),
                    ),
                    (Some(w), Some(e)) => (
                        format!(
                            "not resolved ({w:.0} vs {e:.0} µs): direct's own p99 was above a proxied one's, the noise exceeds the effect"
                        ),
                        "n/a",
                    ),
                    _ => ("n/a".into(), "n/a"),
                };
                let _ = writeln!(
                    o,
                    "| added p99 @ {rate} rps <= 0.5 x Envoy ({how}) | {shown} | {floor} | {verdict} |"
                );
            }
        }
        for &rate in &self.opts.rates {
            let w = self.med(Setup::WardenHttp, rate, |l| l.cpu_us);
            let e = self.med(Setup::EnvoyHttp, rate, |l| l.cpu_us);
            let r = ratio(w, e);
            let floor = match (
                has_tcp.then(|| self.med(Setup::WardenTcp, rate, |l| l.cpu_us)),
                self.verify_us,
            ) {
                (Some(Some(tcp)), Some(v)) => ratio(Some(tcp + v), e).map_or(String::new(), |f| {
                    format!(
                        "{f:.2} x: Warden tcp's CPU ({tcp:.1} µs) + one ES256 verification ({v:.1} µs, `openssl speed`)"
                    )
                }),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "| CPU per request @ {rate} rps <= 0.7 x Envoy | {} ({} vs {} µs) | {floor} | {} |",
                r.map_or("n/a".into(), |r| format!("{r:.2} x")),
                w.map_or("n/a".into(), |v| format!("{v:.1}")),
                e.map_or("n/a".into(), |v| format!("{v:.1}")),
                met(r, 0.7)
            );
        }
        let _ = writeln!(o);
    }

    /// What L7 + JWT costs each proxy above its own plain mTLS relay.
    fn increments(&self, o: &mut String) {
        let pairs: Vec<(Setup, Setup, &str)> = [
            (Setup::WardenHttp, Setup::WardenTcp, "Warden"),
            (Setup::EnvoyHttp, Setup::EnvoyTcp, "Envoy"),
        ]
        .into_iter()
        .filter(|(a, b, _)| self.samples.contains_key(a) && self.samples.contains_key(b))
        .collect();
        if pairs.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "What HTTP + the JWT rule add over the same proxy's plain mTLS tcp listener (medians of the per-round differences):\n"
        );
        let _ = writeln!(
            o,
            "| proxy | rate | added p50 (µs) | added p99 (µs) | CPU per request (µs) |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: |");
        for (l7, l4, name) in pairs {
            for &rate in &self.opts.rates {
                let diff = |f: &dyn Fn(&Lat) -> Option<f64>| {
                    median(
                        self.samples[&l7]
                            .iter()
                            .zip(&self.samples[&l4])
                            .filter_map(|(a, b)| {
                                Some(f(a.lat.get(&rate)?)? - f(b.lat.get(&rate)?)?)
                            })
                            .collect(),
                    )
                    .map_or("n/a".into(), |v| format!("{v:+.1}"))
                };
                let _ = writeln!(
                    o,
                    "| {name} | {rate} | {} | {} | {} |",
                    diff(&|l| Some(l.p50)),
                    diff(&|l| Some(l.p99)),
                    diff(&|l| l.cpu_us)
                );
            }
        }
        let _ = writeln!(o);
    }

    fn per_round(&self, o: &mut String) {
        let _ = writeln!(o, "<details><summary>Per-round values</summary>\n");
        let _ = writeln!(
            o,
            "| round | setup | load avg | p50/p99/p99.9 µs, CPU µs/request, per rate | not 200 / lost / app connections opened, per rate | error |"
        );
        let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- |");
        let rounds = self.samples.values().map(Vec::len).max().unwrap_or(0);
        for round in 0..rounds {
            for (s, list) in &self.samples {
                let Some(x) = list.get(round) else { continue };
                let lat: Vec<String> = x
                    .lat
                    .iter()
                    .map(|(rate, l)| {
                        format!(
                            "{rate}: {:.0}/{:.0}/{:.0}{}",
                            l.p50,
                            l.p99,
                            l.p999,
                            l.cpu_us.map_or(String::new(), |c| format!(", {c:.1}"))
                        )
                    })
                    .collect();
                let bad: Vec<String> = x
                    .lat
                    .values()
                    .map(|l| format!("{}/{}/{}", l.not_ok, l.lost, l.app_conns))
                    .collect();
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} |",
                    round + 1,
                    s.name(),
                    x.loadavg,
                    lat.join("; "),
                    bad.join(", "),
                    x.error.as_deref().unwrap_or("").replace('|', "/")
                );
            }
        }
        let _ = writeln!(o, "\n</details>\n");
    }
}

fn met(ratio: Option<f64>, target: f64) -> &'static str {
    match ratio {
        Some(r) if r <= target => "yes",
        Some(_) => "**no**",
        None => "n/a",
    }
}
