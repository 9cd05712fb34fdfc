//! `warden init`: programs the network namespace it runs in so that every TCP connection
//! into and out of the pod goes through the sidecar's capture listeners.
//!
//! [`rules`] makes the rules from the flags (pure, tested line by line); [`backend`] finds
//! and runs iptables. This module strings them together: check the flags, see whether the
//! namespace has IPv6, choose the backend, read each family's nat table, and apply each
//! family's script in one `iptables-restore` transaction. If the second family fails, the
//! first is taken out again, so the namespace is never left capturing one family only.

mod backend;
mod rules;

use std::io::Write;

use anyhow::Context;

use backend::{Backend, Mode};
use rules::{Config, Family, NatState, RawFlags};

pub(crate) const LONG_ABOUT: &str = "\
Programs the network namespace it runs in (an init container with NET_ADMIN, or by hand) so
that the sidecar cannot be walked around. In the nat table of iptables and ip6tables:

  PREROUTING -p tcp -j WARDEN_INBOUND
    WARDEN_INBOUND: each --skip-inbound-ports port RETURN, then every TCP connection
    REDIRECT --to-ports <--inbound-port>
  OUTPUT -p tcp -j WARDEN_OUTPUT
    WARDEN_OUTPUT: RETURN for connections of --proxy-uid (the sidecar's own, so it never
    captures itself), for loopback (-o lo, 127.0.0.0/8, ::1; the pod's own IP is reached
    over lo too), each --skip-outbound-ports port and each --skip-outbound-cidrs block;
    every other TCP connection REDIRECT --to-ports <--outbound-port>

Idempotent: Warden's chains are emptied and refilled, and a jump is added only when it is
missing. --remove deletes every jump into Warden's chains and the chains, and succeeds when
there is nothing to remove. --dry-run prints the iptables-restore input for each family
and changes nothing (it needs no privileges).

IPv6 gets the same rules (IPv6 CIDRs go to ip6tables only). When the kernel has IPv6 off
(no /proc/net/if_inet6) it is skipped with a note; when the namespace has no IPv6 address
yet, a failure of ip6tables is a note, not an error.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sidecar's user ID: its connections are never captured.
    #[arg(long, value_name = "UID", default_value = "1337")]
    proxy_uid: String,
    /// Where inbound TCP connections are redirected (the sidecar's [capture] inbound).
    #[arg(long, value_name = "PORT", default_value = "15006")]
    inbound_port: String,
    /// Where outbound TCP connections are redirected (the sidecar's [capture] outbound).
    #[arg(long, value_name = "PORT", default_value = "15001")]
    outbound_port: String,
    /// Inbound ports left alone, comma-separated (the metrics port by default; "" for none).
    #[arg(long, value_name = "PORTS", default_value = "15020", action = clap::ArgAction::Append)]
    skip_inbound_ports: Vec<String>,
    /// Outbound destination ports left alone, comma-separated.
    #[arg(long, value_name = "PORTS", action = clap::ArgAction::Append)]
    skip_outbound_ports: Vec<String>,
    /// Outbound destinations left alone, comma-separated CIDRs (IPv4 or IPv6).
    #[arg(long, value_name = "CIDRS", action = clap::ArgAction::Append)]
    skip_outbound_cidrs: Vec<String>,
    /// Print the iptables-restore input that would run, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Take Warden's rules out of this namespace.
    #[arg(long)]
    remove: bool,
    /// Which iptables: auto picks the backend that already has rules in this namespace,
    /// else nft if it works, else legacy, else the unsuffixed iptables.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    iptables_mode: Mode,
}

/// Whether this namespace can carry IPv6 at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ipv6 {
    /// No /proc/net/if_inet6: IPv6 is off in the kernel, there is nothing to capture.
    Off,
    /// The file is empty: no IPv6 address in this namespace (yet). Rules are installed if
    /// ip6tables works; if it does not, nothing can be reached over IPv6 anyway.
    NoAddress,
    /// IPv6 addresses exist: its rules are required like IPv4's.
    On,
}

fn ipv6_state() -> Ipv6 {
    match std::fs::read_to_string("/proc/net/if_inet6") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ipv6::Off,
        Ok(text) if text.trim().is_empty() => Ipv6::NoAddress,
        // Present, or unreadable for another reason: require it (fail closed).
        _ => Ipv6::On,
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = Config::from_flags(&RawFlags {
        proxy_uid: &args.proxy_uid,
        inbound_port: &args.inbound_port,
        outbound_port: &args.outbound_port,
        skip_inbound_ports: &args.skip_inbound_ports,
        skip_outbound_ports: &args.skip_outbound_ports,
        skip_outbound_cidrs: &args.skip_outbound_cidrs,
    })?;
    let ipv6 = ipv6_state();
    let choice = backend::choose(
        args.iptables_mode,
        &probe_unless(args.iptables_mode, Mode::Legacy, Backend::Nft),
        &probe_unless(args.iptables_mode, Mode::Nft, Backend::Legacy),
        backend::find_on_path("iptables-save").is_some()
            && backend::find_on_path("iptables-restore").is_some(),
        args.dry_run,
    )?;
    let backend = choice.backend;
    eprintln!(
        "warden init: iptables backend: {} ({})",
        backend.name(),
        choice.why
    );
    let mut families = vec![Family::V4];
    match ipv6 {
        Ipv6::Off => eprintln!(
            "warden init: IPv6 is disabled in this kernel (no /proc/net/if_inet6): \
             no ip6tables rules"
        ),
        Ipv6::NoAddress | Ipv6::On => families.push(Family::V6),
    }
    if args.dry_run {
        return dry_run(&cfg, backend, &families, args.remove);
    }
    // Read every family first: a failure here changes nothing.
    let mut tables = Vec::new();
    for family in families {
        match backend::save_nat(backend, family) {
            Ok(dump) => tables.push(Table {
                family,
                now: NatState::parse(&dump),
                required: family == Family::V4 || ipv6 == Ipv6::On,
            }),
            Err(failure) if family == Family::V6 && ipv6 == Ipv6::NoAddress => {
                eprintln!(
                    "warden init: IPv6 skipped: this namespace has no IPv6 address and \
                     ip6tables does not work here ({})",
                    failure.detail()
                );
            }
            Err(failure) => {
                let doing = format!("reading the {} nat table", family.label());
                anyhow::bail!("{}", failure.message(&doing));
            }
        }
    }
    if args.remove {
        remove(backend, &tables)
    } else {
        apply(&cfg, backend, &tables)
    }
}

/// One family's nat table as read before any change.
struct Table {
    family: Family,
    now: NatState,
    /// A failure to install is an error (else a note: IPv6 without any IPv6 address).
    required: bool,
}

/// Probes `backend` unless the mode names the other one.
fn probe_unless(mode: Mode, other: Mode, backend: Backend) -> backend::Probe {
    if mode == other {
        backend::Probe::Missing
    } else {
        backend::probe(backend)
    }
}

fn dry_run(
    cfg: &Config,
    backend: Backend,
    families: &[Family],
    remove: bool,
) -> anyhow::Result<()> {
    let mut out = String::new();
    for &family in families {
        out.push_str(&format!(
            "# {}: {}\n",
            family.label(),
            backend.restore_line(family)
        ));
        if remove {
            out.push_str("# (only what is there is deleted; nothing at all when nothing is)\n");
            out.push_str(&rules::remove_script(&NatState::installed()).unwrap_or_default());
        } else {
            out.push_str("# (the -I lines only when that jump is missing)\n");
            out.push_str(&rules::apply_script(cfg, family, &NatState::default()));
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

fn apply(cfg: &Config, backend: Backend, tables: &[Table]) -> anyhow::Result<()> {
    let mut done: Vec<Family> = Vec::new();
    for table in tables {
        let family = table.family;
        let script = rules::apply_script(cfg, family, &table.now);
        if let Err(failure) = backend::restore(backend, family, &script) {
            if !table.required {
                eprintln!(
                    "warden init: {} skipped: this namespace has no {0} address and \
                     installing the rules failed ({})",
                    family.label(),
                    failure.detail()
                );
                continue;
            }
            let doing = format!("installing the {} rules", family.label());
            anyhow::bail!("{}{}", failure.message(&doing), undo(backend, &done));
        }
        done.push(family);
    }
    let labels: Vec<&str> = done.iter().map(|f| f.label()).collect();
    eprintln!(
        "warden init: {} capture installed: inbound TCP -> port {}{}, outbound TCP -> \
         port {} (except uid {}, loopback{}{})",
        labels.join(" and "),
        cfg.inbound_port,
        list_note(" except ports ", &cfg.skip_inbound_ports),
        cfg.outbound_port,
        cfg.proxy_uid,
        list_note(", ports ", &cfg.skip_outbound_ports),
        list_note(", ", &cfg.skip_outbound_cidrs),
    );
    Ok(())
}

fn list_note<T: std::fmt::Display>(prefix: &str, items: &[T]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{prefix}{}", items.join(","))
}

/// Takes the families already installed out again after a later one failed; says
/// whether that worked, to be appended to the error.
fn undo(backend: Backend, done: &[Family]) -> String {
    let mut note = String::new();
    for &family in done {
        let undone =
            backend::save_nat(backend, family).and_then(|dump| {
                match rules::remove_script(&NatState::parse(&dump)) {
                    Some(script) => backend::restore(backend, family, &script),
                    None => Ok(()),
                }
            });
        note.push_str(&match undone {
            Ok(()) => format!(
                "; the {} rules were taken out again, so nothing is captured",
                family.label()
            ),
            Err(failure) => format!(
                "; the {0} rules stay installed: taking them out again failed ({1}); \
                 run warden init --remove",
                family.label(),
                failure.detail()
            ),
        });
    }
    note
}

fn remove(backend: Backend, tables: &[Table]) -> anyhow::Result<()> {
    for Table { family, now, .. } in tables {
        match rules::remove_script(now) {
            Some(script) => {
                if let Err(failure) = backend::restore(backend, *family, &script) {
                    let doing = format!("removing the {} rules", family.label());
                    anyhow::bail!("{}", failure.message(&doing));
                }
                eprintln!("warden init: {} rules removed", family.label());
            }
            None => eprintln!(
                "warden init: no {} rules of Warden's here: nothing to remove",
                family.label()
            ),
        }
    }
    Ok(())
}
