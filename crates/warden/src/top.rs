//! `warden top`: a live table of peer-auth activity per peer identity, from one or more
//! sidecars' admin endpoints (`/metrics`, `/debug/connections`), and the anomalies a
//! control plane found (its admin listener's `/metrics`, with `--control-plane-admin`).
//!
//! Why a hand-written HTTP/1.0 GET and OpenMetrics line parser: the admin server is ours,
//! on loopback, and answers a fixed format; a full HTTP client and a Prometheus parser
//! would be most of this binary's dependency weight for two GETs every two seconds.
//!
//! It must never hang on a bad endpoint (every request has a deadline and a size cap) and
//! never stop showing the other sidecars because one of them is down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_RESPONSE: u64 = 32 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Admin URL of a sidecar (repeatable), like http://127.0.0.1:15000.
    #[arg(
        long = "admin",
        value_name = "URL",
        default_value = "http://127.0.0.1:15000"
    )]
    admin: Vec<String>,
    /// Admin URL of a control plane (repeatable), like http://127.0.0.1:15010: its anomaly
    /// counts are listed under the table.
    #[arg(long = "control-plane-admin", value_name = "URL")]
    control_plane_admin: Vec<String>,
    /// Print one table and exit (for scripts); exits non-zero if a sidecar was unreachable.
    #[arg(long)]
    once: bool,
    /// Refresh period of the live table.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    warden_sidecar::config::parse_duration(text)
}

#[derive(Debug, Error)]
pub enum TopError {
    #[error("{0:?} is not an admin URL like http://127.0.0.1:15000")]
    Url(String),
    #[error("{url}: {problem}")]
    Fetch { url: String, problem: String },
    #[error("{0} of {1} sidecar(s) could not be read")]
    Unreachable(usize, usize),
}

/// One row: a peer identity on one listener of one sidecar.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row {
    pub allowed: u64,
    pub denied: u64,
    /// Let through by audit mode; enforced, these would have been denied.
    pub would_deny: u64,
    pub handshake_failures: BTreeMap<String, u64>,
    pub rx: u64,
    pub tx: u64,
    /// `None` when `/debug/connections` is not served (a metrics-only listener).
    pub open: Option<u64>,
}

/// (sidecar, direction, listener, peer) -> row.
pub type Table = BTreeMap<(String, String, String, String), Row>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for url in &args.admin {
        targets.push(Target::parse(url)?);
    }
    let mut control_planes = Vec::new();
    for url in &args.control_plane_admin {
        control_planes.push(Target::parse(url)?);
    }
    if args.once {
        let (table, mut errors) = collect(&targets).await;
        let anomalies = collect_anomalies(&control_planes, &mut errors).await;
        print!(
            "{}{}",
            render(&table, &errors),
            render_anomalies(&anomalies)
        );
        if !errors.is_empty() {
            return Err(TopError::Unreachable(errors.len(), targets.len()).into());
        }
        return Ok(());
    }
    let mut tick = tokio::time::interval(args.interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown_signal() => return Ok(()),
        }
        let (table, mut errors) = collect(&targets).await;
        let anomalies = collect_anomalies(&control_planes, &mut errors).await;
        // Clear the screen and home the cursor, then redraw.
        print!(
            "\x1b[2J\x1b[H{}{}",
            render(&table, &errors),
            render_anomalies(&anomalies)
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}

#[derive(Debug, Clone)]
struct Target {
    label: String,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, TopError> {
        let bad = || TopError::Url(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            label: authority.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// GET `path`; the body of a 200 answer.
    async fn get(&self, path: &str) -> Result<String, String> {
        let work = async {
            let mut s = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            // HTTP/1.0: the server closes after the body, so reading to EOF frames it.
            let req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.label);
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut raw = Vec::new();
            s.take(MAX_RESPONSE)
                .read_to_end(&mut raw)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok::<_, String>(raw)
        };
        let raw = tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| format!("no answer within {TIMEOUT:?}"))??;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "malformed HTTP response".to_owned())?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("GET {path}: {status}"));
        }
        Ok(body.to_owned())
    }
}

async fn collect(targets: &[Target]) -> (Table, Vec<String>) {
    let mut table = Table::new();
    let mut errors = Vec::new();
    // Sequential on purpose: a handful of loopback GETs, each with its own deadline.
    for t in targets {
        let metrics = t.get("/metrics").await;
        let conns = t.get("/debug/connections").await.ok();
        match metrics {
            Ok(text) => add_metrics(&mut table, &t.label, &text, conns.as_deref()),
            Err(problem) => errors.push(
                TopError::Fetch {
                    url: format!("http://{}", t.label),
                    problem,
                }
                .to_string(),
            ),
        }
    }
    (table, errors)
}

/// (control plane, kind, workload, peer) -> count of `warden_anomalies_total`.
pub type Anomalies = BTreeMap<(String, String, String, String), u64>;

async fn collect_anomalies(targets: &[Target], errors: &mut Vec<String>) -> Anomalies {
    let mut out = Anomalies::new();
    for t in targets {
        match t.get("/metrics").await {
            Ok(text) => add_anomalies(&mut out, &t.label, &text),
            Err(problem) => errors.push(
                TopError::Fetch {
                    url: format!("http://{}", t.label),
                    problem,
                }
                .to_string(),
            ),
        }
    }
    out
}

fn add_anomalies(out: &mut Anomalies, control_plane: &str, text: &str) {
    for s in text.lines().filter_map(parse_line) {
        if s.name != "warden_anomalies_total" {
            continue;
        }
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let key = (
            control_plane.to_owned(),
            label("kind"),
            label("workload"),
            label("peer_id"),
        );
        *out.entry(key).or_default() += s.value.max(0.0) as u64;
    }
}

/// The anomaly counts under the table (nothing when no control plane was asked).
pub fn render_anomalies(anomalies: &Anomalies) -> String {
    let mut out = String::new();
    if anomalies.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nANOMALIES");
    for ((cp, kind, workload, peer), n) in anomalies {
        let _ = writeln!(out, "{cp}  {kind:<10}  {workload}  ->  {peer}  {n}");
    }
    out
}

/// One OpenMetrics sample line: name, labels, value.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses a sample line (`name{a="b"} 1`); comments and malformed lines give `None`.
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (key, after_eq) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after_eq.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            r = &after_eq[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn add_metrics(table: &mut Table, sidecar: &str, text: &str, conns: Option<&str>) {
    let label = |s: &Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
    for s in text.lines().filter_map(parse_line) {
        let key = (
            sidecar.to_owned(),
            label(&s, "direction"),
            label(&s, "listener"),
            label(&s, "peer_id"),
        );
        let n = s.value.max(0.0) as u64;
        match s.name.as_str() {
            "warden_authz_decisions_total" => {
                let row = table.entry(key).or_default();
                match label(&s, "decision").as_str() {
                    "allow" => row.allowed += n,
                    "would_deny" => row.would_deny += n,
                    _ => row.denied += n,
                }
            }
            "warden_tls_handshakes_total" => {
                let result = label(&s, "result");
                if result != "ok" && n > 0 {
                    *table
                        .entry(key)
                        .or_default()
                        .handshake_failures
                        .entry(result)
                        .or_default() += n;
                }
            }
            "warden_connection_bytes_total" => {
                let row = table.entry(key).or_default();
                match label(&s, "flow").as_str() {
                    "rx" => row.rx += n,
                    _ => row.tx += n,
                }
            }
            _ => {}
        }
    }
    // Open connections per peer come from the connection list, which names full IDs.
    let Some(conns) = conns else { return };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(conns) else {
        return;
    };
    for row in table.iter_mut().filter(|(k, _)| k.0 == sidecar) {
        row.1.open = Some(0);
    }
    for c in json["connections"].as_array().into_iter().flatten() {
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        let key = (
            sidecar.to_owned(),
            s("direction"),
            s("listener"),
            s("peer_id"),
        );
        let row = table.entry(key).or_default();
        *row.open.get_or_insert(0) += 1;
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// The table as text: one line per (sidecar, direction, listener, peer).
pub fn render(table: &Table, errors: &[String]) -> String {
    let header = [
        "SIDECAR",
        "DIR",
        "LISTENER",
        "PEER",
        "ALLOWED",
        "DENIED",
        "WOULD_DENY",
        "HS_FAIL",
        "RX",
        "TX",
        "OPEN",
    ];
    let mut rows: Vec<[String; 11]> = Vec::new();
    for ((sidecar, dir, listener, peer), r) in table {
        let hs = if r.handshake_failures.is_empty() {
            "0".to_owned()
        } else {
            r.handshake_failures
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push([
            sidecar.clone(),
            dir.clone(),
            listener.clone(),
            peer.clone(),
            r.allowed.to_string(),
            r.denied.to_string(),
            r.would_deny.to_string(),
            hs,
            human_bytes(r.rx),
            human_bytes(r.tx),
            r.open.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    for e in errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_lines() {
        let s = parse_line(r#"warden_authz_decisions_total{direction="inbound",peer_id="spiffe://a/b",decision="allow"} 3"#)
            .expect("sample");
        assert_eq!(s.name, "warden_authz_decisions_total");
        assert_eq!(s.labels["peer_id"], "spiffe://a/b");
        assert_eq!(s.value, 3.0);
        assert_eq!(
            parse_line("warden_policy_version 7").map(|s| s.value),
            Some(7.0)
        );
        assert!(parse_line("# TYPE x counter").is_none());
        assert!(parse_line("garbage{a=\"unterminated").is_none());
        let esc = parse_line(r#"x{a="q\"uote"} 1"#).expect("escaped");
        assert_eq!(esc.labels["a"], "q\"uote");
    }

    #[test]
    fn urls() {
        assert!(Target::parse("http://127.0.0.1:15000").is_ok());
        assert!(Target::parse("http://[::1]:15000/").is_ok());
        assert!(Target::parse("https://x:1").is_err());
        assert!(Target::parse("http://x").is_err());
    }
}

#[cfg(test)]
mod anomaly_tests {
    use super::*;

    #[test]
    fn would_deny_has_its_column_and_anomalies_are_listed() {
        let mut table = Table::new();
        add_metrics(
            &mut table,
            "s",
            "warden_authz_decisions_total{direction=\"inbound\",listener=\"http\",peer_id=\"spiffe://example.org/a\",decision=\"would_deny\",reason=\"no_match\"} 4\n",
            None,
        );
        let row = table.values().next().expect("row");
        assert_eq!((row.allowed, row.denied, row.would_deny), (0, 0, 4));
        assert!(render(&table, &[]).contains("WOULD_DENY"));
        let mut anomalies = Anomalies::new();
        add_anomalies(
            &mut anomalies,
            "cp",
            "warden_anomalies_total{kind=\"new_edge\",workload=\"spiffe://example.org/x\",peer_id=\"spiffe://example.org/y\"} 2\n",
        );
        let text = render_anomalies(&anomalies);
        assert!(text.contains("new_edge"), "{text}");
        assert!(
            text.contains("spiffe://example.org/x  ->  spiffe://example.org/y  2"),
            "{text}"
        );
        assert!(render_anomalies(&Anomalies::new()).is_empty());
    }
}
