//! Which iptables `warden init` drives, and running it: finding the binaries on `PATH`,
//! choosing between the nf_tables and the legacy backend, reading a table with
//! `iptables-save`, applying a script with `iptables-restore --noflush`, and turning
//! iptables' failures into messages that say what to do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::Family;

/// `--iptables-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The backend that already holds rules in this namespace, else nf_tables if it works,
    /// else legacy, else the unsuffixed `iptables`.
    Auto,
    /// `iptables-nft` (nf_tables kernel API).
    Nft,
    /// `iptables-legacy` (x_tables kernel API).
    Legacy,
}

/// One set of iptables binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
    /// `iptables`, `iptables-save`, … without a suffix: whatever the image links them to
    /// (older images have only these).
    Plain,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Plain => "iptables",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Plain => "",
        }
    }

    /// `iptables-nft-save`, `ip6tables-legacy-restore`, … (`tool` is "save" or "restore").
    pub fn tool(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}{}-{tool}", self.suffix())
    }

    /// The command line of the restore step, for `--dry-run` and messages.
    pub fn restore_line(self, family: Family) -> String {
        format!(
            "{} {}",
            self.tool(family, "restore"),
            restore_flags(self).join(" ")
        )
    }
}

fn restore_flags(backend: Backend) -> &'static [&'static str] {
    match backend {
        // -w: wait for the xtables lock rather than fail when another program holds it
        // (nft accepts and ignores it). The unsuffixed binary may predate -w.
        Backend::Nft | Backend::Legacy => &["-w", "--noflush"],
        Backend::Plain => &["--noflush"],
    }
}

/// The first `name` in `PATH`, as `execvp` would find it.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `<backend>-save` said about this namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The binaries are not on `PATH`.
    Missing,
    /// It works; this many rules exist (all tables).
    Rules(usize),
    /// Refused for want of privileges.
    Denied(String),
    /// Failed otherwise (no kernel support, …).
    Broken(String),
}

/// Why a backend was chosen, for the note on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    pub why: String,
}

pub const NO_BINARY: &str = "warden init: no iptables binary found (looked for iptables-nft, \
     iptables-legacy, iptables on PATH); install iptables in the init image";

pub const NO_NET_ADMIN: &str = "warden init needs CAP_NET_ADMIN in the pod's network namespace \
     (the init container's securityContext.capabilities.add: [NET_ADMIN, NET_RAW])";

/// The backend for `mode`, from the probes of nft, legacy and whether the unsuffixed
/// binaries exist. A dry run never fails for want of privileges or of iptables: it shows
/// what a privileged run would most likely pick.
pub fn choose(
    mode: Mode,
    nft: &Probe,
    legacy: &Probe,
    plain_present: bool,
    dry_run: bool,
) -> anyhow::Result<Choice> {
    let pick = |backend, why: &str| {
        Ok(Choice {
            backend,
            why: why.to_owned(),
        })
    };
    let explicit = |backend: Backend, probe: &Probe| {
        if *probe == Probe::Missing && !dry_run {
            anyhow::bail!(
                "warden init: --iptables-mode {0}: {1} or {2} not found on PATH; install \
                 iptables in the init image",
                backend.name(),
                backend.tool(Family::V4, "save"),
                backend.tool(Family::V4, "restore"),
            );
        }
        pick(backend, "--iptables-mode")
    };
    match mode {
        Mode::Nft => return explicit(Backend::Nft, nft),
        Mode::Legacy => return explicit(Backend::Legacy, legacy),
        Mode::Auto => {}
    }
    // The kubelet's or the CNI's rules decide.
    let (n, l) = (rule_count(nft), rule_count(legacy));
    if n > 0 || l > 0 {
        return if l > n {
            pick(
                Backend::Legacy,
                "auto: this namespace's rules are in iptables-legacy",
            )
        } else {
            pick(
                Backend::Nft,
                "auto: this namespace's rules are in iptables-nft",
            )
        };
    }
    let guess = |why: &str| {
        if *nft != Probe::Missing || (*legacy == Probe::Missing && !plain_present) {
            pick(Backend::Nft, why)
        } else if *legacy != Probe::Missing {
            pick(Backend::Legacy, why)
        } else {
            pick(Backend::Plain, why)
        }
    };
    // Refused: nothing can be read (a legacy save may still "work" by listing no table,
    // which says nothing about nf_tables).
    if matches!(nft, Probe::Denied(_)) || matches!(legacy, Probe::Denied(_)) {
        if dry_run {
            return guess("auto, guessed: cannot read the rules without privileges (dry run)");
        }
        anyhow::bail!("{NO_NET_ADMIN}");
    }
    match (nft, legacy) {
        (Probe::Rules(_), _) => {
            return pick(Backend::Nft, "auto: no rules yet, and nf_tables works");
        }
        (_, Probe::Rules(_)) => {
            return pick(
                Backend::Legacy,
                "auto: no rules yet, and nf_tables does not work",
            );
        }
        _ => {}
    }
    if plain_present {
        return pick(
            Backend::Plain,
            "auto: neither iptables-nft nor iptables-legacy is usable",
        );
    }
    if dry_run {
        return pick(
            Backend::Nft,
            "auto, guessed: no usable iptables on PATH here, a real run needs one",
        );
    }
    match (nft, legacy) {
        (Probe::Broken(e), _) | (_, Probe::Broken(e)) => {
            anyhow::bail!("warden init: no working iptables: {e}")
        }
        _ => anyhow::bail!("{NO_BINARY}"),
    }
}

fn rule_count(probe: &Probe) -> usize {
    match probe {
        Probe::Rules(n) => *n,
        _ => 0,
    }
}

/// Probes `backend` (IPv4): are its binaries there, and how many rules does it hold?
pub fn probe(backend: Backend) -> Probe {
    let save = backend.tool(Family::V4, "save");
    if find_on_path(&save).is_none() || find_on_path(&backend.tool(Family::V4, "restore")).is_none()
    {
        return Probe::Missing;
    }
    match run(&save, &[], None) {
        Ok(dump) => Probe::Rules(dump.lines().filter(|l| l.starts_with("-A ")).count()),
        Err(Failure::Denied(e)) => Probe::Denied(e),
        Err(Failure::Other(e)) => Probe::Broken(e),
    }
}

/// Why a command failed: for want of privileges, or otherwise (the message says which
/// command and what it printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Denied(String),
    Other(String),
}

impl Failure {
    /// The message, saying what was being done (`"reading the IPv4 nat table"`).
    pub fn message(&self, doing: &str) -> String {
        match self {
            Failure::Denied(detail) => format!("{NO_NET_ADMIN} ({doing}: {detail})"),
            Failure::Other(detail) => format!("warden init: {doing}: {detail}"),
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Failure::Denied(detail) | Failure::Other(detail) => detail,
        }
    }
}

/// `<backend>-save -t nat` of `family`.
pub fn save_nat(backend: Backend, family: Family) -> Result<String, Failure> {
    run(&backend.tool(family, "save"), &["-t", "nat"], None)
}

/// `<backend>-restore --noflush` of `family`, fed `script`.
pub fn restore(backend: Backend, family: Family, script: &str) -> Result<(), Failure> {
    let tool = backend.tool(family, "restore");
    run(&tool, restore_flags(backend), Some(script))
        .map(drop)
        .map_err(|failure| match failure {
            Failure::Other(detail) => Failure::Other(quote_failed_line(&detail, script)),
            denied => denied,
        })
}

/// Runs `tool` (looked up on `PATH`) and returns its stdout.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Failure> {
    let Some(path) = find_on_path(tool) else {
        return Err(Failure::Other(format!(
            "{tool} not found on PATH; install iptables in the init image"
        )));
    };
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Other(format!("cannot run {}: {e}", path.display())))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error (the tool exited early) shows up in its status and stderr below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Failure::Other(format!("waiting for {tool}: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let detail = format!(
        "{tool} {} failed ({}): {}",
        args.join(" "),
        out.status,
        if stderr.is_empty() {
            "no message"
        } else {
            &stderr
        }
    );
    Err(if is_permission_problem(&stderr) {
        Failure::Denied(detail)
    } else {
        Failure::Other(detail)
    })
}

/// iptables' words for "not allowed": "Permission denied (you must be root)" from nft and
/// legacy alike, "Operation not permitted" from the kernel, and the xtables lock file the
/// legacy tools cannot open without privileges.
fn is_permission_problem(stderr: &str) -> bool {
    [
        "Permission denied",
        "you must be root",
        "Operation not permitted",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

/// iptables-restore says "Error occurred at line: N": append that line of the script.
fn quote_failed_line(detail: &str, script: &str) -> String {
    let line = detail
        .split("Error occurred at line: ")
        .nth(1)
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .and_then(|n| script.lines().nth(n.checked_sub(1)?));
    match line {
        Some(text) => format!("{detail}\n  the line was: {text}"),
        None => detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(mode: Mode, nft: Probe, legacy: Probe, plain: bool, dry: bool) -> String {
        match choose(mode, &nft, &legacy, plain, dry) {
            Ok(c) => c.backend.name().to_owned(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn auto_follows_the_backend_that_has_rules() {
        use Probe::*;
        assert_eq!(
            chosen(Mode::Auto, Rules(0), Rules(3), true, false),
            "legacy"
        );
        assert_eq!(chosen(Mode::Auto, Rules(5), Rules(3), true, false), "nft");
        assert_eq!(chosen(Mode::Auto, Rules(2), Rules(2), true, false), "nft");
        assert_eq!(
            chosen(Mode::Auto, Broken("x".into()), Rules(1), true, false),
            "legacy"
        );
        assert_eq!(chosen(Mode::Auto, Rules(0), Rules(0), true, false), "nft");
        assert_eq!(chosen(Mode::Auto, Missing, Rules(0), true, false), "legacy");
        assert_eq!(
            chosen(Mode::Auto, Broken("x".into()), Rules(0), true, false),
            "legacy"
        );
        assert_eq!(
            chosen(Mode::Auto, Missing, Missing, true, false),
            "iptables"
        );
    }

    #[test]
    fn auto_errors_are_clear() {
        use Probe::*;
        let none = chosen(Mode::Auto, Missing, Missing, false, false);
        assert_eq!(none, format!("error: {NO_BINARY}"));
        let denied = chosen(
            Mode::Auto,
            Denied("d".into()),
            Denied("d".into()),
            true,
            false,
        );
        assert_eq!(denied, format!("error: {NO_NET_ADMIN}"));
        let broken = chosen(
            Mode::Auto,
            Broken("no nf_tables".into()),
            Missing,
            false,
            false,
        );
        assert!(broken.contains("no nf_tables"), "{broken}");
    }

    #[test]
    fn a_dry_run_without_privileges_guesses() {
        use Probe::*;
        let d = || Denied("d".into());
        assert_eq!(chosen(Mode::Auto, d(), d(), true, true), "nft");
        assert_eq!(chosen(Mode::Auto, Missing, d(), true, true), "legacy");
        // As root without CAP_NET_ADMIN, iptables-legacy-save lists no table and succeeds.
        assert_eq!(chosen(Mode::Auto, d(), Rules(0), true, true), "nft");
        assert_eq!(
            chosen(Mode::Auto, d(), Rules(0), true, false),
            format!("error: {NO_NET_ADMIN}")
        );
        assert_eq!(chosen(Mode::Auto, Missing, Missing, true, true), "iptables");
        // Nothing installed at all: a dry run still shows the rules.
        assert_eq!(chosen(Mode::Auto, Missing, Missing, false, true), "nft");
        assert_eq!(
            chosen(Mode::Legacy, Missing, Missing, false, true),
            "legacy"
        );
    }

    #[test]
    fn explicit_modes_need_their_binaries() {
        use Probe::*;
        assert_eq!(
            chosen(Mode::Legacy, Rules(9), Rules(0), true, false),
            "legacy"
        );
        assert_eq!(
            chosen(Mode::Nft, Missing, Denied("d".into()), true, false),
            {
                "error: warden init: --iptables-mode nft: iptables-nft-save or \
             iptables-nft-restore not found on PATH; install iptables in the init image"
            }
        );
    }

    #[test]
    fn tool_names() {
        assert_eq!(
            Backend::Nft.tool(Family::V6, "restore"),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.tool(Family::V4, "save"),
            "iptables-legacy-save"
        );
        assert_eq!(Backend::Plain.tool(Family::V6, "save"), "ip6tables-save");
        assert_eq!(
            Backend::Plain.restore_line(Family::V4),
            "iptables-restore --noflush"
        );
    }

    #[test]
    fn permission_words() {
        assert!(is_permission_problem(
            "iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: \
             Permission denied (you must be root)"
        ));
        assert!(is_permission_problem(
            "Fatal: can't open lock file /run/xtables.lock: Permission denied"
        ));
        assert!(!is_permission_problem(
            "Chain 'WARDEN_INBOUND' does not exist"
        ));
    }

    #[test]
    fn the_failed_line_is_quoted() {
        let detail = "iptables-restore failed: Bad argument\nError occurred at line: 2\nTry";
        let out = quote_failed_line(detail, "*nat\n-A X -j NOPE\nCOMMIT\n");
        assert!(out.ends_with("the line was: -A X -j NOPE"), "{out}");
        assert_eq!(quote_failed_line("no line", "*nat\n"), "no line");
    }
}
