//! The pure half of `warden init`: flags checked into a [`Config`], and the nat-table rules
//! of one address family as `iptables-restore` input. Nothing here runs a command or reads
//! a file, so every rule Warden installs is tested here, byte for byte.
//!
//! The rules (IPv4; IPv6 the same with `::1/128` and the IPv6 CIDRs):
//! ```text
//! *nat
//! :WARDEN_INBOUND - [0:0]
//! :WARDEN_OUTPUT - [0:0]
//! -A WARDEN_INBOUND -p tcp -m tcp --dport 15020 -j RETURN          (each skipped inbound port)
//! -A WARDEN_INBOUND -p tcp -j REDIRECT --to-ports 15006
//! -A WARDEN_OUTPUT -m owner --uid-owner 1337 -j RETURN              (the proxy: never a loop)
//! -A WARDEN_OUTPUT -o lo -j RETURN                                  (loopback, own pod IP included)
//! -A WARDEN_OUTPUT -d 127.0.0.0/8 -j RETURN
//! -A WARDEN_OUTPUT -p tcp -m tcp --dport 53 -j RETURN               (each skipped outbound port)
//! -A WARDEN_OUTPUT -d 10.0.0.0/8 -j RETURN                          (each skipped CIDR)
//! -A WARDEN_OUTPUT -p tcp -j REDIRECT --to-ports 15001
//! -I PREROUTING 1 -p tcp -j WARDEN_INBOUND                          (only when missing)
//! -I OUTPUT 1 -p tcp -j WARDEN_OUTPUT                               (only when missing)
//! COMMIT
//! ```
//! Rules are written the way `iptables-save` prints them (`-m tcp` included), so a dump of
//! the namespace contains these lines verbatim and a jump can be recognised by its text.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Warden's chain for connections arriving at the pod (jumped to from `PREROUTING`).
pub const INBOUND_CHAIN: &str = "WARDEN_INBOUND";
/// Warden's chain for connections the pod's processes open (jumped to from `OUTPUT`).
pub const OUTPUT_CHAIN: &str = "WARDEN_OUTPUT";
const OWN_CHAINS: [&str; 2] = [INBOUND_CHAIN, OUTPUT_CHAIN];

/// The built-in chain and rule that send TCP into each of Warden's chains.
const JUMPS: [(&str, &str); 2] = [
    ("PREROUTING", "-p tcp -j WARDEN_INBOUND"),
    ("OUTPUT", "-p tcp -j WARDEN_OUTPUT"),
];

/// A flag whose value is wrong; the message starts with the flag's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    pub flag: &'static str,
    pub message: String,
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.message)
    }
}

impl std::error::Error for FlagError {}

fn flag_error(flag: &'static str, message: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        message: message.into(),
    }
}

/// The flags as typed, before any check (lists may be given as several flags, each
/// comma-separated).
#[derive(Debug, Clone, Default)]
pub struct RawFlags<'a> {
    pub proxy_uid: &'a str,
    pub inbound_port: &'a str,
    pub outbound_port: &'a str,
    pub skip_inbound_ports: &'a [String],
    pub skip_outbound_ports: &'a [String],
    pub skip_outbound_cidrs: &'a [String],
}

/// Checked flags: what the rules are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// In the order given, without repeats.
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Config {
    pub fn from_flags(raw: &RawFlags<'_>) -> Result<Self, FlagError> {
        let proxy_uid = parse_uid(raw.proxy_uid)?;
        let inbound_port = parse_port("--inbound-port", raw.inbound_port)?;
        let outbound_port = parse_port("--outbound-port", raw.outbound_port)?;
        if inbound_port == outbound_port {
            return Err(flag_error(
                "--outbound-port",
                format!(
                    "{outbound_port} is also the --inbound-port: inbound and outbound \
                     connections need separate capture ports"
                ),
            ));
        }
        let skip_inbound_ports = list(raw.skip_inbound_ports)
            .map(|item| parse_port("--skip-inbound-ports", item))
            .collect::<Result<Vec<_>, _>>()?;
        let skip_outbound_ports = list(raw.skip_outbound_ports)
            .map(|item| parse_port("--skip-outbound-ports", item))
            .collect::<Result<Vec<_>, _>>()?;
        let skip_outbound_cidrs = list(raw.skip_outbound_cidrs)
            .map(|item| {
                Cidr::parse(item).ok_or_else(|| {
                    flag_error(
                        "--skip-outbound-cidrs",
                        format!(
                            "{item:?} is not a CIDR (an IPv4 or IPv6 address, optionally \
                             with /prefix: 10.0.0.0/8, fd00::/8)"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            proxy_uid,
            inbound_port,
            outbound_port,
            skip_inbound_ports: dedup(skip_inbound_ports),
            skip_outbound_ports: dedup(skip_outbound_ports),
            skip_outbound_cidrs: dedup(skip_outbound_cidrs),
        })
    }
}

/// Items of comma-separated lists, trimmed. A flag given as the empty string is an empty
/// list (`--skip-inbound-ports ""` turns the default off); an empty item inside a list is
/// kept, so that it is refused as "not a port".
fn list(values: &[String]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn parse_port(flag: &'static str, text: &str) -> Result<u16, FlagError> {
    match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(flag_error(
            flag,
            format!("{text:?} is not a port (1-65535)"),
        )),
    }
}

fn parse_uid(text: &str) -> Result<u32, FlagError> {
    let uid = text.trim().parse::<u32>().map_err(|_| {
        flag_error(
            "--proxy-uid",
            format!("{text:?} is not a user ID (a number)"),
        )
    })?;
    if uid == 0 {
        return Err(flag_error(
            "--proxy-uid",
            "0 is root: connections of every process running as root would escape capture; \
             run the sidecar as a user of its own (1337 by default)",
        ));
    }
    if uid == u32::MAX {
        return Err(flag_error(
            "--proxy-uid",
            format!("{uid} is (uid_t)-1, which no process can have"),
        ));
    }
    Ok(uid)
}

/// An address block, host bits cleared (`10.1.2.3/8` is kept as `10.0.0.0/8`, as iptables
/// prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `ADDR` or `ADDR/PREFIX`, IPv4 or IPv6. `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            // Digits only: `u8::from_str` would also take "+8".
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max)?
            }
            Some(_) => return None,
            None => max,
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Some(Self { addr, prefix })
    }

    pub fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// The rules of Warden's two chains for `family`, as `-A` lines in order.
pub fn chain_rules(cfg: &Config, family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    for port in &cfg.skip_inbound_ports {
        rules.push(format!(
            "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    rules.push(format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        cfg.inbound_port
    ));
    // First: the sidecar's own connections (to the real destination, to the app on
    // loopback) are never captured, which is what keeps it from capturing itself.
    rules.push(format!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
        cfg.proxy_uid
    ));
    // Loopback: the app talking to itself, to the sidecar's admin port, or to its own pod
    // IP (routed over `lo` too) never leaves the pod.
    rules.push(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
    rules.push(format!(
        "-A {OUTPUT_CHAIN} -d {} -j RETURN",
        family.loopback()
    ));
    for port in &cfg.skip_outbound_ports {
        rules.push(format!(
            "-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    for cidr in cfg
        .skip_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        rules.push(format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN"));
    }
    rules.push(format!(
        "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        cfg.outbound_port
    ));
    rules
}

/// One rule of a nat dump: the chain it is in and the rest of its `-A` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub spec: String,
}

impl Rule {
    /// The chain this rule jumps or goes to, if any.
    fn target(&self) -> Option<&str> {
        let mut words = self.spec.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-j" || w == "-g" || w == "--jump" || w == "--goto" {
                return words.next();
            }
        }
        None
    }
}

/// The nat table of one family as `iptables-save -t nat` printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// Every chain declared, built-in ones included.
    pub chains: Vec<String>,
    pub rules: Vec<Rule>,
}

impl NatState {
    /// Reads the `*nat` section of an `iptables-save` dump (comments, counters and other
    /// tables ignored).
    pub fn parse(dump: &str) -> Self {
        let mut state = Self::default();
        let mut in_nat = false;
        for line in dump.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    state.chains.push(name.to_owned());
                }
            } else if let Some((chain, spec)) = line
                .strip_prefix("-A ")
                .and_then(|rule| rule.split_once(' '))
            {
                state.rules.push(Rule {
                    chain: chain.to_owned(),
                    spec: spec.trim().to_owned(),
                });
            }
        }
        state
    }

    /// The state a complete installation leaves (for `--remove --dry-run`).
    pub fn installed() -> Self {
        Self {
            chains: OWN_CHAINS.iter().map(|c| (*c).to_owned()).collect(),
            rules: JUMPS
                .iter()
                .map(|(chain, spec)| Rule {
                    chain: (*chain).to_owned(),
                    spec: (*spec).to_owned(),
                })
                .collect(),
        }
    }

    fn own_chains(&self) -> impl Iterator<Item = &str> {
        OWN_CHAINS
            .iter()
            .copied()
            .filter(|c| self.chains.iter().any(|have| have == c))
    }

    /// Rules outside Warden's chains that lead into them.
    fn references(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| {
            !OWN_CHAINS.contains(&r.chain.as_str())
                && r.target().is_some_and(|t| OWN_CHAINS.contains(&t))
        })
    }

    /// Whether anything of Warden's is in this table.
    pub fn has_warden(&self) -> bool {
        self.own_chains().next().is_some() || self.references().next().is_some()
    }
}

/// `iptables-restore --noflush` input that installs the rules of `family`, given the
/// table as it is now. Declaring a chain with `--noflush` creates it or empties it, so the
/// chains always end up holding exactly [`chain_rules`]; each jump is inserted (first in
/// its built-in chain, ahead of any rule that could let a connection through) only when
/// it is missing, and any other rule leading into Warden's chains (a copy, or one of an
/// older version) is deleted. Run twice, it leaves the same table. One `COMMIT`: it
/// applies whole or not at all.
pub fn apply_script(cfg: &Config, family: Family, now: &NatState) -> String {
    let mut out = String::from("*nat\n");
    for chain in OWN_CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in chain_rules(cfg, family) {
        out.push_str(&rule);
        out.push('\n');
    }
    let mut kept = [false; JUMPS.len()];
    for rule in now.references() {
        let canonical = JUMPS
            .iter()
            .position(|(chain, spec)| rule.chain == *chain && rule.spec == *spec);
        match canonical {
            Some(i) if !kept[i] => kept[i] = true,
            _ => out.push_str(&format!("-D {} {}\n", rule.chain, rule.spec)),
        }
    }
    for (i, (chain, spec)) in JUMPS.iter().enumerate() {
        if !kept[i] {
            out.push_str(&format!("-I {chain} 1 {spec}\n"));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input that takes out everything of Warden's in this table:
/// every rule leading into its chains, then the chains. `None` when there is nothing.
pub fn remove_script(now: &NatState) -> Option<String> {
    if !now.has_warden() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for rule in now.references() {
        out.push_str(&format!("-D {} {}\n", rule.chain, rule.spec));
    }
    let own: Vec<&str> = now.own_chains().collect();
    for chain in &own {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &own {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn config(skip_in: &[&str], skip_out: &[&str], cidrs: &[&str]) -> Result<Config, FlagError> {
        let (a, b, c) = (strings(skip_in), strings(skip_out), strings(cidrs));
        Config::from_flags(&RawFlags {
            proxy_uid: "1337",
            inbound_port: "15006",
            outbound_port: "15001",
            skip_inbound_ports: &a,
            skip_outbound_ports: &b,
            skip_outbound_cidrs: &c,
        })
    }

    fn with(f: impl FnOnce(&mut RawFlags<'_>)) -> Result<Config, FlagError> {
        let mut raw = RawFlags {
            proxy_uid: "1337",
            inbound_port: "15006",
            outbound_port: "15001",
            ..RawFlags::default()
        };
        f(&mut raw);
        Config::from_flags(&raw)
    }

    #[test]
    fn defaults_parse() {
        let cfg = config(&["15020"], &[], &[]).expect("valid");
        assert_eq!(cfg.proxy_uid, 1337);
        assert_eq!((cfg.inbound_port, cfg.outbound_port), (15006, 15001));
        assert_eq!(cfg.skip_inbound_ports, vec![15020]);
    }

    #[test]
    fn lists_split_trim_dedup_and_may_repeat_the_flag() {
        let cfg =
            config(&["15020, 9090", "15020"], &[""], &["10.1.2.3/8,fd00::1/8"]).expect("valid");
        assert_eq!(cfg.skip_inbound_ports, vec![15020, 9090]);
        assert!(cfg.skip_outbound_ports.is_empty(), "\"\" is an empty list");
        let cidrs: Vec<String> = cfg
            .skip_outbound_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "fd00::/8"]);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: Vec<(Result<Config, FlagError>, &str)> = vec![
            (
                config(&[], &["80x"], &[]),
                r#"--skip-outbound-ports: "80x" is not a port (1-65535)"#,
            ),
            (
                config(&[], &["443,"], &[]),
                r#"--skip-outbound-ports: "" is not a port (1-65535)"#,
            ),
            (
                config(&["70000"], &[], &[]),
                r#"--skip-inbound-ports: "70000" is not a port (1-65535)"#,
            ),
            (
                config(&[], &[], &["10.0.0.0/33"]),
                r#"--skip-outbound-cidrs: "10.0.0.0/33" is not a CIDR"#,
            ),
            (
                config(&[], &[], &["fd00::/129"]),
                r#"--skip-outbound-cidrs: "fd00::/129" is not a CIDR"#,
            ),
            (
                config(&[], &[], &["10.0.0/8"]),
                r#"--skip-outbound-cidrs: "10.0.0/8" is not a CIDR"#,
            ),
            (
                config(&[], &[], &["10.0.0.0/+8"]),
                r#"--skip-outbound-cidrs: "10.0.0.0/+8" is not a CIDR"#,
            ),
            (
                with(|r| r.inbound_port = "0"),
                r#"--inbound-port: "0" is not a port (1-65535)"#,
            ),
            (
                with(|r| r.outbound_port = "http"),
                r#"--outbound-port: "http" is not a port (1-65535)"#,
            ),
            (
                with(|r| r.outbound_port = "15006"),
                "--outbound-port: 15006 is also the --inbound-port",
            ),
            (
                with(|r| r.proxy_uid = "-1"),
                r#"--proxy-uid: "-1" is not a user ID"#,
            ),
            (with(|r| r.proxy_uid = "0"), "--proxy-uid: 0 is root"),
            (
                with(|r| r.proxy_uid = "4294967295"),
                "--proxy-uid: 4294967295 is (uid_t)-1",
            ),
        ];
        for (result, want) in cases {
            let err = result.expect_err(want).to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn cidrs_are_normalised() {
        let show = |s: &str| Cidr::parse(s).map(|c| c.to_string());
        assert_eq!(show("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(show("10.1.2.3").as_deref(), Some("10.1.2.3/32"));
        assert_eq!(show("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(show("2001:db8::1/32").as_deref(), Some("2001:db8::/32"));
        assert_eq!(show("::/0").as_deref(), Some("::/0"));
        assert_eq!(show("fd00::1").as_deref(), Some("fd00::1/128"));
        assert_eq!(show("10.0.0.0/"), None);
        assert_eq!(show("example.com/8"), None);
    }

    const V4_RULES: &str = "\
-A WARDEN_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A WARDEN_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A WARDEN_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WARDEN_OUTPUT -o lo -j RETURN
-A WARDEN_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WARDEN_OUTPUT -p tcp -m tcp --dport 53 -j RETURN
-A WARDEN_OUTPUT -d 10.0.0.0/8 -j RETURN
-A WARDEN_OUTPUT -p tcp -j REDIRECT --to-ports 15001
";

    fn sample() -> Config {
        config(&["15020"], &["53"], &["10.0.0.0/8", "fd00::/8"]).expect("valid")
    }

    #[test]
    fn fresh_table_gets_chains_and_jumps() {
        let script = apply_script(&sample(), Family::V4, &NatState::default());
        let want = format!(
            "*nat\n:WARDEN_INBOUND - [0:0]\n:WARDEN_OUTPUT - [0:0]\n{V4_RULES}\
             -I PREROUTING 1 -p tcp -j WARDEN_INBOUND\n\
             -I OUTPUT 1 -p tcp -j WARDEN_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(script, want);
    }

    #[test]
    fn ipv6_uses_its_loopback_and_only_its_cidrs() {
        let rules = chain_rules(&sample(), Family::V6).join("\n");
        assert!(rules.contains("-A WARDEN_OUTPUT -d ::1/128 -j RETURN"));
        assert!(rules.contains("-A WARDEN_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(!rules.contains("10.0.0.0/8") && !rules.contains("127.0.0.0/8"));
        let v4 = chain_rules(&sample(), Family::V4).join("\n");
        assert!(!v4.contains("fd00::") && !v4.contains("::1"));
    }

    /// The dump an installation leaves, as iptables-save prints it.
    fn installed_dump(extra: &str) -> String {
        format!(
            "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [3:180]\n:POSTROUTING ACCEPT [0:0]\n:WARDEN_INBOUND - [0:0]\n\
             :WARDEN_OUTPUT - [0:0]\n-A PREROUTING -p tcp -j WARDEN_INBOUND\n\
             -A OUTPUT -p tcp -j WARDEN_OUTPUT\n{extra}{V4_RULES}COMMIT\n# Completed\n"
        )
    }

    #[test]
    fn second_run_adds_no_jump() {
        let now = NatState::parse(&installed_dump(""));
        assert!(now.has_warden());
        let script = apply_script(&sample(), Family::V4, &now);
        assert!(
            !script.contains("-I ") && !script.contains("-D "),
            "{script}"
        );
        assert!(
            script.contains(":WARDEN_OUTPUT - [0:0]\n"),
            "chains are refilled"
        );
    }

    #[test]
    fn copies_and_foreign_jumps_into_our_chains_are_deleted() {
        let extra = "-A OUTPUT -p tcp -j WARDEN_OUTPUT\n-A OUTPUT -j WARDEN_OUTPUT\n\
                     -A CNI-X -g WARDEN_INBOUND\n";
        let now = NatState::parse(&installed_dump(extra));
        let script = apply_script(&sample(), Family::V4, &now);
        let changes: Vec<&str> = script
            .lines()
            .filter(|l| l.starts_with("-D") || l.starts_with("-I"))
            .collect();
        assert_eq!(
            changes,
            [
                "-D OUTPUT -p tcp -j WARDEN_OUTPUT",
                "-D OUTPUT -j WARDEN_OUTPUT",
                "-D CNI-X -g WARDEN_INBOUND"
            ]
        );
    }

    #[test]
    fn remove_deletes_every_jump_then_the_chains() {
        let now = NatState::parse(&installed_dump("-A OUTPUT -p tcp -j WARDEN_OUTPUT\n"));
        let script = remove_script(&now).expect("something to remove");
        assert_eq!(
            script,
            "*nat\n-D PREROUTING -p tcp -j WARDEN_INBOUND\n-D OUTPUT -p tcp -j WARDEN_OUTPUT\n\
             -D OUTPUT -p tcp -j WARDEN_OUTPUT\n-F WARDEN_INBOUND\n-F WARDEN_OUTPUT\n\
             -X WARDEN_INBOUND\n-X WARDEN_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(remove_script(&NatState::installed()), {
            let s = NatState::parse(&installed_dump(""));
            remove_script(&s)
        });
    }

    #[test]
    fn nothing_to_remove_from_a_table_without_warden() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                    -A OUTPUT -d 10.0.0.1/32 -j DNAT --to-destination 10.0.0.2\nCOMMIT\n\
                    *filter\n:WARDEN_OUTPUT - [0:0]\nCOMMIT\n";
        let now = NatState::parse(dump);
        assert!(
            !now.has_warden(),
            "a chain of that name in another table is not ours"
        );
        assert_eq!(remove_script(&now), None);
        assert_eq!(remove_script(&NatState::default()), None);
    }

    #[test]
    fn a_chain_left_without_jumps_is_still_removed() {
        let now = NatState::parse("*nat\n:WARDEN_INBOUND - [0:0]\nCOMMIT\n");
        assert_eq!(
            remove_script(&now).as_deref(),
            Some("*nat\n-F WARDEN_INBOUND\n-X WARDEN_INBOUND\nCOMMIT\n")
        );
    }
}
