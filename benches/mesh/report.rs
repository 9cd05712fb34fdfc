//! Figures of one run and their Markdown rendering: the results table with the
//! Warden/Envoy and Warden/direct ratios, the targets, and the per-round raw values.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::sys::Ceilings;
use crate::topo::Kind;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub achieved_rps: f64,
    pub lost: u64,
    /// Proxies' CPU seconds per 100,000 requests.
    pub cpu_per_100k: Option<f64>,
    /// The user-space part of `cpu_per_100k` (the rest is the kernel's).
    pub user_cpu_per_100k: Option<f64>,
}

/// Everything measured on one instance of one topology (one round).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub round: usize,
    pub loadavg: String,
    pub error: Option<String>,
    pub latency: BTreeMap<u32, Latency>,
    /// bytes/s
    pub bulk1: Option<f64>,
    pub bulk8: Option<f64>,
    /// Proxies' CPU seconds per GiB moved, single stream.
    pub bulk1_cpu_per_gib: Option<f64>,
    /// Full duplex (echo): bytes/s each way, 1 and 8 connections.
    pub duplex1: Option<f64>,
    pub duplex8: Option<f64>,
    /// Proxies' CPU seconds per GiB moved (both directions counted), 1 connection.
    pub duplex1_cpu_per_gib: Option<f64>,
    /// The user-space part of `duplex1_cpu_per_gib` (the rest is the kernel's).
    pub duplex1_user_cpu_per_gib: Option<f64>,
    pub conns_per_sec: Option<f64>,
    pub conn_p99_us: Option<f64>,
    pub conn_failed: u64,
    /// Proxies' CPU seconds per 1,000 new connections.
    pub conn_cpu_per_1k: Option<f64>,
    /// VmRSS per proxy process (client side first), idle after one request.
    pub rss_idle: Vec<u64>,
    /// VmRSS per proxy process with `idle_conns` open connections.
    pub rss_conns: Vec<u64>,
    pub idle_conns: usize,
    pub idle_alive: usize,
    pub threads: Vec<u64>,
}

impl Sample {
    /// Max idle RSS of one proxy process, MiB.
    fn rss_idle_max(&self) -> Option<f64> {
        self.rss_idle.iter().max().map(|&b| b as f64 / MIB)
    }

    /// Extra bytes per idle connection, summed over both proxies of the hop.
    fn bytes_per_conn(&self) -> Option<f64> {
        if self.rss_conns.len() != self.rss_idle.len() || self.idle_conns == 0 {
            return None;
        }
        let before: u64 = self.rss_idle.iter().sum();
        let after: u64 = self.rss_conns.iter().sum();
        Some((after as f64 - before as f64) / self.idle_conns as f64)
    }
}

pub struct Run {
    pub quick: bool,
    pub rates: Vec<u32>,
    pub samples: BTreeMap<&'static str, Vec<Sample>>,
    pub ceilings_before: Ceilings,
    pub ceilings_after: Ceilings,
    pub machine: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub idle_target: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "n/a".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

impl Run {
    fn of(&self, kind: Kind) -> &[Sample] {
        self.samples.get(kind.name()).map_or(&[], Vec::as_slice)
    }

    /// Median over the rounds of `f`.
    fn med(&self, kind: Kind, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        median(self.of(kind).iter().filter_map(&f).collect())
    }

    /// Median over rounds of (kind - direct) for the same round: added latency.
    fn added(&self, kind: Kind, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let direct = self.of(Kind::Direct);
        median(
            self.of(kind)
                .iter()
                .filter_map(|s| {
                    let d = direct.iter().find(|d| d.round == s.round)?;
                    Some(f(s)? - f(d)?)
                })
                .collect(),
        )
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "### Mesh results{}\n",
            if self.quick { " (quick smoke run)" } else { "" }
        );
        for (k, v) in &self.machine {
            let _ = writeln!(w, "- {k}: {v}");
        }
        let rounds = self.of(Kind::Warden).len();
        let _ = writeln!(
            w,
            "- rounds: {rounds}; in each, all topologies run side by side and every measurement alternates between them (direct, TCP relay, Warden, Envoy, then reversed for the next measurement and round); each figure is the median over rounds, added latency is the median of (topology - direct) within a round\n"
        );
        self.table(w);
        self.targets(w);
        self.raw(w);
        if !self.notes.is_empty() {
            let _ = writeln!(w, "\nNotes from this run:\n");
            for n in &self.notes {
                let _ = writeln!(w, "- {n}");
            }
        }
        out
    }

    fn row(
        &self,
        w: &mut String,
        name: &str,
        digits: usize,
        f: impl Fn(&Sample) -> Option<f64> + Copy,
    ) {
        let d = self.med(Kind::Direct, f);
        let r = self.med(Kind::Relay, f);
        let wa = self.med(Kind::Warden, f);
        let e = self.med(Kind::Envoy, f);
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(d, digits),
            fmt(r, digits),
            fmt(wa, digits),
            fmt(e, digits),
            fmt(ratio(wa, e), 2),
            fmt(ratio(r, e), 2),
            fmt(ratio(wa, d), 2),
        );
    }

    fn added_row(&self, w: &mut String, name: &str, f: impl Fn(&Sample) -> Option<f64> + Copy) {
        let r = self.added(Kind::Relay, f);
        let wa = self.added(Kind::Warden, f);
        let e = self.added(Kind::Envoy, f);
        let _ = writeln!(
            w,
            "| {name} | 0 | {} | {} | {} | {} | {} | |",
            fmt(r, 0),
            fmt(wa, 0),
            fmt(e, 0),
            fmt(ratio(wa, e), 2),
            fmt(ratio(r, e), 2),
        );
    }

    fn table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "| metric | direct | TCP relay | Warden | Envoy | Warden/Envoy | relay/Envoy | Warden/direct |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for &rate in &self.rates {
            let lat = move |s: &Sample| s.latency.get(&rate).cloned();
            let r = format!("{rate} rps");
            self.row(w, &format!("latency p50 @ {r} (µs)"), 0, move |s| {
                lat(s).map(|l| l.p50_us)
            });
            self.row(w, &format!("latency p99 @ {r} (µs)"), 0, move |s| {
                lat(s).map(|l| l.p99_us)
            });
            self.row(w, &format!("latency p99.9 @ {r} (µs)"), 0, move |s| {
                lat(s).map(|l| l.p999_us)
            });
            self.added_row(w, &format!("**added** p50 @ {r} (µs)"), move |s| {
                lat(s).map(|l| l.p50_us)
            });
            self.added_row(w, &format!("**added** p99 @ {r} (µs)"), move |s| {
                lat(s).map(|l| l.p99_us)
            });
            self.added_row(w, &format!("**added** p99.9 @ {r} (µs)"), move |s| {
                lat(s).map(|l| l.p999_us)
            });
            self.row(w, &format!("proxy CPU s / 100k req @ {r}"), 3, move |s| {
                lat(s).and_then(|l| l.cpu_per_100k)
            });
            self.row(w, &format!("of which user space @ {r}"), 3, move |s| {
                lat(s).and_then(|l| l.user_cpu_per_100k)
            });
            self.row(w, &format!("achieved rate @ {r} (rps)"), 0, move |s| {
                lat(s).map(|l| l.achieved_rps)
            });
        }
        self.row(w, "bulk, 1 stream (MiB/s)", 0, |s| s.bulk1.map(|b| b / MIB));
        self.row(w, "bulk, 8 streams (MiB/s)", 0, |s| {
            s.bulk8.map(|b| b / MIB)
        });
        self.row(w, "proxy CPU s / GiB, 1 stream", 2, |s| s.bulk1_cpu_per_gib);
        self.row(w, "full duplex, 1 connection (MiB/s each way)", 0, |s| {
            s.duplex1.map(|b| b / MIB)
        });
        self.row(w, "full duplex, 8 connections (MiB/s each way)", 0, |s| {
            s.duplex8.map(|b| b / MIB)
        });
        self.row(w, "proxy CPU s / GiB, full duplex 1 connection", 2, |s| {
            s.duplex1_cpu_per_gib
        });
        self.row(w, "of which user space, full duplex 1 connection", 2, |s| {
            s.duplex1_user_cpu_per_gib
        });
        self.row(w, "new mTLS connections/s (1 req each)", 0, |s| {
            s.conns_per_sec
        });
        self.row(w, "new connection + request p99 (µs)", 0, |s| {
            s.conn_p99_us
        });
        self.row(w, "proxy CPU s / 1k new connections", 3, |s| {
            s.conn_cpu_per_1k
        });
        self.row(w, "RSS idle, largest proxy process (MiB)", 1, |s| {
            s.rss_idle_max()
        });
        self.row(
            w,
            &format!(
                "RSS with {} idle conns, both proxies (MiB)",
                self.idle_target
            ),
            1,
            |s| (!s.rss_conns.is_empty()).then(|| s.rss_conns.iter().sum::<u64>() as f64 / MIB),
        );
        self.row(w, "bytes per idle connection, both proxies", 0, |s| {
            s.bytes_per_conn()
        });
        let aes = median(vec![
            self.ceilings_before.aes_gcm,
            self.ceilings_after.aes_gcm,
        ]);
        let hs = median(vec![
            self.ceilings_before.handshakes_per_sec(crate::sys::nproc()),
            self.ceilings_after.handshakes_per_sec(crate::sys::nproc()),
        ]);
        self.row(
            w,
            "bulk 1 stream / AES-128-GCM 1-core ceiling (%)",
            1,
            |s| s.bulk1.zip(aes).map(|(b, a)| 100.0 * b / a),
        );
        self.row(w, "new conns/s / ECDSA handshake ceiling (%)", 1, |s| {
            s.conns_per_sec.zip(hs).map(|(c, h)| 100.0 * c / h)
        });
        let _ = writeln!(
            w,
            "\nCeilings (`openssl speed`, one core, before / after the run): AES-128-GCM 16 KiB {} / {} MiB/s; ECDSA P-256 sign {} / {} per s, verify {} / {} per s; hence at most {} full mTLS handshakes/s on {} cores (2 signs + 4 verifies each, key exchange not counted).\n",
            fmt(Some(self.ceilings_before.aes_gcm / MIB), 0),
            fmt(Some(self.ceilings_after.aes_gcm / MIB), 0),
            fmt(Some(self.ceilings_before.ecdsa_sign), 0),
            fmt(Some(self.ceilings_after.ecdsa_sign), 0),
            fmt(Some(self.ceilings_before.ecdsa_verify), 0),
            fmt(Some(self.ceilings_after.ecdsa_verify), 0),
            fmt(hs, 0),
            crate::sys::nproc(),
        );
    }

    fn targets(&self, w: &mut String) {
        let moderate = self.rates.first().copied().unwrap_or(1000);
        let busiest = self.rates.last().copied().unwrap_or(moderate);
        let lat = |rate: u32| move |s: &Sample| s.latency.get(&rate).map(|l| l.p99_us);
        let cpu = |s: &Sample| s.latency.get(&busiest).and_then(|l| l.cpu_per_100k);
        let aes = median(vec![
            self.ceilings_before.aes_gcm,
            self.ceilings_after.aes_gcm,
        ]);
        // (target, Warden's figure, the TCP relay's figure, Warden's cost above the floor /
        // Envoy's cost above the floor, met)
        let mut rows: Vec<(String, String, String, String, Option<bool>)> = Vec::new();
        // (Warden - floor) / (Envoy - floor) of a median figure.
        let above = |w: Option<f64>, r: Option<f64>, e: Option<f64>| match (w, r, e) {
            (Some(w), Some(r), Some(e)) if e > r => Some((w - r) / (e - r)),
            _ => None,
        };
        let vs_envoy = |kind: Kind, f: &dyn Fn(&Sample) -> Option<f64>| {
            ratio(self.med(kind, f), self.med(Kind::Envoy, f))
        };
        let added_vs_envoy = |kind: Kind| {
            ratio(
                self.added(kind, lat(moderate)),
                self.added(Kind::Envoy, lat(moderate)),
            )
        };
        let x = |r: Option<f64>| format!("{} x", fmt(r, 2));
        let (r, floor) = (added_vs_envoy(Kind::Warden), added_vs_envoy(Kind::Relay));
        let p99 = lat(moderate);
        let lat_above = above(
            self.added(Kind::Warden, p99),
            self.added(Kind::Relay, p99),
            self.added(Kind::Envoy, p99),
        );
        rows.push((
            format!("added p99 @ {moderate} rps <= 0.5 x Envoy"),
            x(r),
            x(floor),
            x(lat_above),
            r.map(|r| r <= 0.5),
        ));
        rows.push((
            format!("added p99 @ {moderate} rps, above the floor <= 0.35 x Envoy's"),
            x(lat_above),
            String::new(),
            x(lat_above),
            lat_above.map(|r| r <= 0.35),
        ));
        let bulk1 = |s: &Sample| s.bulk1;
        let (r, floor) = (
            vs_envoy(Kind::Warden, &bulk1),
            vs_envoy(Kind::Relay, &bulk1),
        );
        rows.push((
            "bulk 1 stream >= 1.3 x Envoy".into(),
            x(r),
            format!(
                "{} (direct, no proxy: {})",
                x(floor),
                x(vs_envoy(Kind::Direct, &bulk1))
            ),
            String::new(),
            r.map(|r| r >= 1.3),
        ));
        let of_aes = |kind: Kind| self.med(kind, bulk1).zip(aes).map(|(b, a)| 100.0 * b / a);
        let f = of_aes(Kind::Warden);
        rows.push((
            "bulk 1 stream >= 40 % of AES-GCM ceiling".into(),
            format!("{} %", fmt(f, 1)),
            format!(
                "{} % (direct: {} %)",
                fmt(of_aes(Kind::Relay), 1),
                fmt(of_aes(Kind::Direct), 1)
            ),
            String::new(),
            f.map(|f| f >= 40.0),
        ));
        for (streams, goal) in [(1, 1.1), (8, 1.2)] {
            let f = move |s: &Sample| if streams == 1 { s.duplex1 } else { s.duplex8 };
            let (r, floor) = (vs_envoy(Kind::Warden, &f), vs_envoy(Kind::Relay, &f));
            rows.push((
                format!(
                    "full duplex, {streams} connection{} >= {goal} x Envoy",
                    if streams == 1 { "" } else { "s" }
                ),
                x(r),
                format!("{} (direct: {})", x(floor), x(vs_envoy(Kind::Direct, &f))),
                String::new(),
                r.map(|r| r >= goal),
            ));
        }
        let conns = |s: &Sample| s.conns_per_sec;
        let r = vs_envoy(Kind::Warden, &conns);
        rows.push((
            "new connections/s >= 1.5 x Envoy".into(),
            x(r),
            "(no TLS)".into(),
            String::new(),
            r.map(|r| r >= 1.5),
        ));
        let m = self.med(Kind::Warden, Sample::rss_idle_max);
        rows.push((
            "idle RSS < 15 MiB (per sidecar)".into(),
            format!("{} MiB", fmt(m, 1)),
            String::new(),
            String::new(),
            m.map(|m| m < 15.0),
        ));
        let r = vs_envoy(Kind::Warden, &Sample::bytes_per_conn);
        rows.push((
            "memory per idle connection <= 0.5 x Envoy".into(),
            x(r),
            String::new(),
            String::new(),
            r.map(|r| r <= 0.5),
        ));
        let (r, floor) = (vs_envoy(Kind::Warden, &cpu), vs_envoy(Kind::Relay, &cpu));
        let cpu_above = above(
            self.med(Kind::Warden, cpu),
            self.med(Kind::Relay, cpu),
            self.med(Kind::Envoy, cpu),
        );
        rows.push((
            format!("CPU per request @ {busiest} rps <= 0.5 x Envoy"),
            x(r),
            x(floor),
            x(cpu_above),
            r.map(|r| r <= 0.5),
        ));
        rows.push((
            format!("CPU per request @ {busiest} rps, above the floor <= 0.25 x Envoy's"),
            x(cpu_above),
            String::new(),
            x(cpu_above),
            cpu_above.map(|r| r <= 0.25),
        ));
        let _ = writeln!(
            w,
            "| target | Warden, this run | floor: two plain TCP relays, same run | cost above the floor / Envoy's cost above the floor | met |\n| --- | ---: | ---: | ---: | --- |"
        );
        for (name, value, floor, above, met) in rows {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(w, "| {name} | {value} | {floor} | {above} | {met} |");
        }
    }

    fn raw(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "\n<details><summary>Per-round values</summary>\n\n| round | topology | load avg | p50/p99/p99.9 µs per rate | bulk 1 / 8 MiB/s | duplex 1 / 8 MiB/s | conns/s | RSS idle MiB | RSS +conns MiB | alive | threads | error |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        let mut all: Vec<(&str, &Sample)> = self
            .samples
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |s| (*k, s)))
            .collect();
        all.sort_by_key(|(k, s)| (s.round, *k));
        for (k, s) in all {
            let lat: Vec<String> = s
                .latency
                .iter()
                .map(|(r, l)| {
                    format!(
                        "{r}: {:.0}/{:.0}/{:.0}{}",
                        l.p50_us,
                        l.p99_us,
                        l.p999_us,
                        if l.lost > 0 {
                            format!(" ({} lost)", l.lost)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect();
            let mib = |v: &[u64]| {
                v.iter()
                    .map(|b| format!("{:.1}", *b as f64 / MIB))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            let _ = writeln!(
                w,
                "| {} | {k} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {}/{} | {} | {} |",
                s.round + 1,
                s.loadavg,
                lat.join("; "),
                fmt(s.bulk1.map(|b| b / MIB), 0),
                fmt(s.bulk8.map(|b| b / MIB), 0),
                fmt(s.duplex1.map(|b| b / MIB), 0),
                fmt(s.duplex8.map(|b| b / MIB), 0),
                if s.conn_failed > 0 {
                    format!("{} ({} failed)", fmt(s.conns_per_sec, 0), s.conn_failed)
                } else {
                    fmt(s.conns_per_sec, 0)
                },
                mib(&s.rss_idle),
                mib(&s.rss_conns),
                s.idle_alive,
                s.idle_conns,
                s.threads
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" + "),
                s.error.as_deref().unwrap_or(""),
            );
        }
        let _ = writeln!(w, "\n</details>");
    }
}
