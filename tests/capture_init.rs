//! `warden init` against real network namespaces, with the nf_tables and the legacy
//! iptables backends: what `--dry-run` prints (and that it changes nothing), the rules
//! installed, idempotence, `--remove`, which connections are redirected (the proxy's uid is
//! not, another uid's is; inbound to the app's port is, to a skipped port is not), and the
//! errors for bad flags, missing privileges and a missing iptables.
//!
//! Namespace tests skip with a reason when not root (see `support/netns.rs`), unless
//! `WARDEN_REQUIRE_NETNS=1`; the flag and binary errors run everywhere.

#[path = "support/netns.rs"]
mod netns;

use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use netns::{Lan, Netns};

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");
/// How long a connection may take to show up at a listener.
const DEADLINE: Duration = Duration::from_secs(10);

/// The flags every namespace test passes besides `--iptables-mode`.
const FLAGS: [&str; 4] = [
    "--skip-outbound-ports",
    "53",
    "--skip-outbound-cidrs",
    "10.0.0.0/8,fd00::/8",
];

fn expected_rules(v6: bool) -> Vec<String> {
    let (lo, cidr) = if v6 {
        ("::1/128", "fd00::/8")
    } else {
        ("127.0.0.0/8", "10.0.0.0/8")
    };
    [
        "-A PREROUTING -p tcp -j WARDEN_INBOUND",
        "-A OUTPUT -p tcp -j WARDEN_OUTPUT",
        "-A WARDEN_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A WARDEN_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        "-A WARDEN_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A WARDEN_OUTPUT -o lo -j RETURN",
        &format!("-A WARDEN_OUTPUT -d {lo} -j RETURN"),
        "-A WARDEN_OUTPUT -p tcp -m tcp --dport 53 -j RETURN",
        &format!("-A WARDEN_OUTPUT -d {cidr} -j RETURN"),
        "-A WARDEN_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// `iptables-nft-save`, `ip6tables-legacy-save`, …
fn save_tool(mode: &str, v6: bool) -> String {
    format!("{}-{mode}-save", if v6 { "ip6tables" } else { "iptables" })
}

/// Both families' nat tables of `mode`.
fn dumps(ns: &Netns, mode: &str) -> [String; 2] {
    [
        ns.nat_rules(&save_tool(mode, false)),
        ns.nat_rules(&save_tool(mode, true)),
    ]
}

fn rules_of(dump: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

fn init(ns: &Netns, args: &[&str]) -> Output {
    ns.command(WARDEN)
        .arg("init")
        .args(args)
        .output()
        .expect("run warden init")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn succeeded(out: &Output) -> (String, String) {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "warden init failed: {}\n{stdout}{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn failed(out: &Output) -> (String, String) {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "warden init should have failed:\n{stdout}{stderr}"
    );
    (stdout, stderr)
}

// ---- errors that need no namespace ----

/// With no iptables on PATH, nothing can be changed whatever goes wrong, so these run
/// anywhere; and a flag error must win over the missing binary (flags are checked first).
#[test]
fn bad_flags_name_the_flag_and_change_nothing() {
    let empty = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &str); 7] = [
        (
            &["--skip-outbound-ports", "443,80x"],
            r#"error: --skip-outbound-ports: "80x" is not a port (1-65535)"#,
        ),
        (
            &["--skip-inbound-ports", "65536"],
            r#"error: --skip-inbound-ports: "65536" is not a port (1-65535)"#,
        ),
        (
            &["--skip-outbound-cidrs", "10.0.0.0/33"],
            r#"error: --skip-outbound-cidrs: "10.0.0.0/33" is not a CIDR"#,
        ),
        (
            &["--inbound-port", "0"],
            r#"error: --inbound-port: "0" is not a port (1-65535)"#,
        ),
        (
            &["--inbound-port", "15001"],
            "error: --outbound-port: 15001 is also the --inbound-port",
        ),
        (&["--proxy-uid", "0"], "error: --proxy-uid: 0 is root"),
        (
            &["--proxy-uid", "nobody"],
            r#"error: --proxy-uid: "nobody" is not a user ID"#,
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(WARDEN)
            .arg("init")
            .args(args)
            .env("PATH", empty.path())
            .output()
            .expect("run warden init");
        let (stdout, stderr) = failed(&out);
        assert!(stdout.is_empty(), "{args:?}: printed {stdout}");
        assert!(
            stderr.starts_with(want),
            "{args:?}: stderr should start with {want:?}, is {stderr:?}"
        );
    }
}

#[test]
fn no_iptables_binary_is_a_clear_error() {
    let empty = tempfile::tempdir().expect("temp dir");
    let run = |extra: &[&str]| {
        Command::new(WARDEN)
            .arg("init")
            .args(extra)
            .env("PATH", empty.path())
            .output()
            .expect("run warden init")
    };
    let (_, stderr) = failed(&run(&[]));
    assert_eq!(
        stderr.trim(),
        "error: warden init: no iptables binary found (looked for iptables-nft, \
         iptables-legacy, iptables on PATH); install iptables in the init image"
    );
    // A dry run still shows the rules, with a guessed backend.
    let (stdout, stderr) = succeeded(&run(&["--dry-run"]));
    assert!(
        stderr.contains("guessed: no usable iptables on PATH"),
        "{stderr}"
    );
    assert!(
        stdout.contains("-A WARDEN_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
        "{stdout}"
    );
    let (_, stderr) = failed(&run(&["--iptables-mode", "legacy", "--remove"]));
    assert!(
        stderr.contains("--iptables-mode legacy: iptables-legacy-save or iptables-legacy-restore not found on PATH"),
        "{stderr}"
    );
}

// ---- dry run ----

fn dry_run_prints_and_changes_nothing(mode: &str) {
    let ns = Netns::new("dry");
    let before = dumps(&ns, mode);
    let mut args = vec!["--dry-run", "--iptables-mode", mode];
    args.extend(FLAGS);
    let (stdout, stderr) = succeeded(&init(&ns, &args));
    assert!(
        stderr.contains(&format!("iptables backend: {mode}")),
        "{stderr}"
    );
    for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
        let tool = if v6 { "ip6tables" } else { "iptables" };
        let header = format!("# {family}: {tool}-{mode}-restore -w --noflush\n");
        let rest = stdout
            .split_once(&header)
            .unwrap_or_else(|| panic!("no {header:?} in\n{stdout}"))
            .1;
        let block = &rest[..rest.find("COMMIT\n").expect("COMMIT") + 7];
        let mut want = String::from(
            "# (the -I lines only when that jump is missing)\n*nat\n\
             :WARDEN_INBOUND - [0:0]\n:WARDEN_OUTPUT - [0:0]\n",
        );
        for rule in &expected_rules(v6)[2..] {
            want.push_str(rule);
            want.push('\n');
        }
        want.push_str(
            "-I PREROUTING 1 -p tcp -j WARDEN_INBOUND\n\
             -I OUTPUT 1 -p tcp -j WARDEN_OUTPUT\nCOMMIT\n",
        );
        assert_eq!(block, want, "{family} block of the dry run");
    }
    assert_eq!(dumps(&ns, mode), before, "--dry-run changed the namespace");

    // No privileges needed, and the same output.
    let out = ns
        .command_as(65534, WARDEN)
        .arg("init")
        .args(&args)
        .output()
        .expect("run warden init");
    let (unprivileged, _) = succeeded(&out);
    assert_eq!(unprivileged, stdout, "dry run as uid 65534");

    let (removal, _) = succeeded(&init(
        &ns,
        &["--dry-run", "--remove", "--iptables-mode", mode],
    ));
    assert!(
        removal.contains(
            "-D PREROUTING -p tcp -j WARDEN_INBOUND\n-D OUTPUT -p tcp -j WARDEN_OUTPUT\n\
             -F WARDEN_INBOUND\n-F WARDEN_OUTPUT\n-X WARDEN_INBOUND\n-X WARDEN_OUTPUT\nCOMMIT\n"
        ),
        "{removal}"
    );
    assert_eq!(
        dumps(&ns, mode),
        before,
        "--remove --dry-run changed the namespace"
    );
}

#[test]
fn dry_run_nft() {
    if netns::available_or_skip("dry_run_nft") {
        dry_run_prints_and_changes_nothing("nft");
    }
}

#[test]
fn dry_run_legacy() {
    if netns::available_or_skip("dry_run_legacy") {
        dry_run_prints_and_changes_nothing("legacy");
    }
}

// ---- apply, idempotence, remove ----

fn apply_twice_then_remove(mode: &str) {
    let other = if mode == "nft" { "legacy" } else { "nft" };
    let ns = Netns::new("apply");
    let fresh = dumps(&ns, mode);
    let other_fresh = dumps(&ns, other);
    let mut args = vec!["--iptables-mode", mode];
    args.extend(FLAGS);

    succeeded(&init(&ns, &args));
    let first = dumps(&ns, mode);
    for (dump, v6) in first.iter().zip([false, true]) {
        assert_eq!(rules_of(dump), expected_rules(v6), "v6={v6}:\n{dump}");
        assert!(
            dump.contains(":WARDEN_INBOUND -\n:WARDEN_OUTPUT -"),
            "{dump}"
        );
    }
    assert_eq!(
        dumps(&ns, other),
        other_fresh,
        "the other backend was touched"
    );

    succeeded(&init(&ns, &args));
    assert_eq!(dumps(&ns, mode), first, "a second run changed the rules");

    // Other flags: the chains are refilled, the jumps stay single.
    succeeded(&init(
        &ns,
        &["--iptables-mode", mode, "--skip-outbound-ports", "80"],
    ));
    let changed = rules_of(&dumps(&ns, mode)[0]);
    assert!(changed.contains(&"-A WARDEN_OUTPUT -p tcp -m tcp --dport 80 -j RETURN".into()));
    assert!(
        !changed
            .iter()
            .any(|r| r.contains("--dport 53") || r.contains("10.0.0.0/8"))
    );
    assert_eq!(
        changed
            .iter()
            .filter(|r| r.starts_with("-A OUTPUT"))
            .count(),
        1
    );

    let (_, stderr) = succeeded(&init(&ns, &["--remove", "--iptables-mode", mode]));
    assert!(stderr.contains("IPv4 rules removed"), "{stderr}");
    assert_eq!(dumps(&ns, mode), fresh, "--remove left something behind");

    let (_, stderr) = succeeded(&init(&ns, &["--remove", "--iptables-mode", mode]));
    assert!(stderr.contains("nothing to remove"), "{stderr}");
    assert_eq!(dumps(&ns, mode), fresh);
}

#[test]
fn apply_twice_then_remove_nft() {
    if netns::available_or_skip("apply_twice_then_remove_nft") {
        apply_twice_then_remove("nft");
    }
}

#[test]
fn apply_twice_then_remove_legacy() {
    if netns::available_or_skip("apply_twice_then_remove_legacy") {
        apply_twice_then_remove("legacy");
    }
}

/// A jump added by hand a second time is cleaned up by the next run, and `--remove` takes
/// every copy.
#[test]
fn extra_jumps_are_cleaned_up() {
    if !netns::available_or_skip("extra_jumps_are_cleaned_up") {
        return;
    }
    let ns = Netns::new("copies");
    let fresh = ns.nat_rules("iptables-nft-save");
    succeeded(&init(&ns, &["--iptables-mode", "nft"]));
    let installed = ns.nat_rules("iptables-nft-save");
    let add_copy = || {
        netns::run(ns.command("iptables-nft").args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            "WARDEN_OUTPUT",
        ]));
    };
    add_copy();
    succeeded(&init(&ns, &["--iptables-mode", "nft"]));
    assert_eq!(ns.nat_rules("iptables-nft-save"), installed);
    add_copy();
    add_copy();
    succeeded(&init(&ns, &["--remove", "--iptables-mode", "nft"]));
    assert_eq!(ns.nat_rules("iptables-nft-save"), fresh);
}

// ---- backend choice and privileges ----

#[test]
fn auto_mode_follows_the_rules_already_there() {
    if !netns::available_or_skip("auto_mode_follows_the_rules_already_there") {
        return;
    }
    let ns = Netns::new("auto");
    netns::run(ns.command("iptables-legacy").args([
        "-w", "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "ACCEPT",
    ]));
    let (_, stderr) = succeeded(&init(&ns, &[]));
    assert!(stderr.contains("iptables backend: legacy"), "{stderr}");
    assert!(
        ns.nat_rules("iptables-legacy-save")
            .contains("WARDEN_OUTPUT")
    );
    assert!(!ns.nat_rules("iptables-nft-save").contains("WARDEN"));
    succeeded(&init(&ns, &["--remove"]));
    assert!(!ns.nat_rules("iptables-legacy-save").contains("WARDEN"));

    let clean = Netns::new("auto");
    let (_, stderr) = succeeded(&init(&clean, &["--dry-run"]));
    assert!(stderr.contains("iptables backend: nft"), "{stderr}");
}

#[test]
fn without_net_admin_says_so() {
    if !netns::available_or_skip("without_net_admin_says_so") {
        return;
    }
    let ns = Netns::new("nocap");
    let before = [dumps(&ns, "nft"), dumps(&ns, "legacy")];
    for mode in ["auto", "nft", "legacy"] {
        for extra in [&[][..], &["--remove"][..]] {
            let out = ns
                .command_as(65534, WARDEN)
                .args(["init", "--iptables-mode", mode])
                .args(extra)
                .output()
                .expect("run warden init");
            let (_, stderr) = failed(&out);
            assert!(
                stderr.contains(
                    "error: warden init needs CAP_NET_ADMIN in the pod's network namespace \
                     (the init container's securityContext.capabilities.add: \
                     [NET_ADMIN, NET_RAW])"
                ),
                "{mode} {extra:?}: {stderr}"
            );
        }
    }
    assert_eq!([dumps(&ns, "nft"), dumps(&ns, "legacy")], before);
}

/// Root without CAP_NET_ADMIN, as in an init container that did not add it.
#[test]
fn root_without_net_admin_says_so() {
    if !netns::available_or_skip("root_without_net_admin_says_so") {
        return;
    }
    let ns = Netns::new("rootnocap");
    let before = [dumps(&ns, "nft"), dumps(&ns, "legacy")];
    for mode in ["auto", "nft", "legacy"] {
        let out = ns
            .command("setpriv")
            .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"])
            .args([WARDEN, "init", "--iptables-mode", mode])
            .output()
            .expect("run warden init");
        let (_, stderr) = failed(&out);
        assert!(
            stderr.contains("error: warden init needs CAP_NET_ADMIN"),
            "{mode}: {stderr}"
        );
    }
    assert_eq!([dumps(&ns, "nft"), dumps(&ns, "legacy")], before);
}

// ---- what is redirected ----

/// A listener whose accepted connections (their original destination, when redirected,
/// else their local address) arrive on a channel. Its thread lives as long as the test.
fn listen(ns: &Netns, addr: &str) -> mpsc::Receiver<(SocketAddr, SocketAddr)> {
    let listener = ns.enter(|| TcpListener::bind(addr).expect("bind"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (Ok(peer), Ok(local)) = (conn.peer_addr(), conn.local_addr()) else {
                continue;
            };
            let dst = original_dst(&conn).map_or(local, SocketAddr::V4);
            if tx.send((peer, dst)).is_err() {
                return;
            }
        }
    });
    rx
}

/// SO_ORIGINAL_DST: where a redirected connection was going (None when not redirected).
fn original_dst(conn: &TcpStream) -> Option<SocketAddrV4> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket we own, writing at most `len` bytes into `addr`.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then(|| {
        SocketAddrV4::new(
            u32::from_be(addr.sin_addr.s_addr).into(),
            u16::from_be(addr.sin_port),
        )
    })
}

fn connect_from(ns: &Netns, to: &str) {
    let to: SocketAddr = to.parse().expect("address");
    ns.enter(|| TcpStream::connect_timeout(&to, DEADLINE))
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
}

/// Connects as `uid` (no capabilities) with bash's /dev/tcp.
fn connect_as(ns: &Netns, uid: u32, host: &str, port: u16) {
    let out = ns
        .command_as(uid, "timeout")
        .args([
            "10",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{host}/{port}"),
        ])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "uid {uid} could not connect to {host}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn arrived(rx: &mpsc::Receiver<(SocketAddr, SocketAddr)>, what: &str) -> (SocketAddr, SocketAddr) {
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what}: no connection within {DEADLINE:?}"))
}

fn nothing(rx: &mpsc::Receiver<(SocketAddr, SocketAddr)>, what: &str) {
    if let Ok(got) = rx.try_recv() {
        panic!("{what}: unexpected connection {got:?}");
    }
}

fn redirects(mode: &str) {
    let mut lan = Lan::new();
    let (pod, pod_ip) = lan.pod("app", 1);
    let (peer, peer_ip) = lan.pod("peer", 2);
    succeeded(&init(&pod, &["--iptables-mode", mode]));

    let outbound = listen(&pod, "127.0.0.1:15001");
    let inbound = listen(&pod, "0.0.0.0:15006");
    let app = listen(&pod, "0.0.0.0:8080");
    let metrics = listen(&pod, "0.0.0.0:15020");
    let server = listen(&peer, "0.0.0.0:9000");
    let target = format!("{peer_ip}:9000");

    // The proxy's uid reaches the real server.
    connect_as(&pod, 1337, &peer_ip.to_string(), 9000);
    let (from, _) = arrived(&server, "uid 1337 to the server");
    assert_eq!(from.ip(), pod_ip);
    nothing(&outbound, "uid 1337 was redirected");

    // Root (a thread in the namespace) and another uid are redirected to 15001, and the
    // original destination is kept for the sidecar.
    connect_from(&pod, &target);
    let (_, dst) = arrived(&outbound, "root's connection at 15001");
    assert_eq!(dst.to_string(), target);
    connect_as(&pod, 1000, &peer_ip.to_string(), 9000);
    let (_, dst) = arrived(&outbound, "uid 1000's connection at 15001");
    assert_eq!(dst.to_string(), target);
    nothing(&server, "a captured connection reached the server");

    // Loopback and the pod's own IP are not captured.
    connect_from(&pod, "127.0.0.1:8080");
    arrived(&app, "loopback to the app");
    connect_from(&pod, &format!("{pod_ip}:8080"));
    arrived(&app, "own pod IP to the app");
    nothing(&outbound, "loopback was redirected");

    // Inbound: the app's port lands on 15006 (original port kept), a skipped port does not.
    connect_from(&peer, &format!("{pod_ip}:8080"));
    let (from, dst) = arrived(&inbound, "inbound to 8080 at 15006");
    assert_eq!(
        (from.ip(), dst.to_string()),
        (peer_ip.into(), format!("{pod_ip}:8080"))
    );
    nothing(&app, "inbound reached the app directly");
    connect_from(&peer, &format!("{pod_ip}:15020"));
    arrived(&metrics, "inbound to the skipped port 15020");
    nothing(&inbound, "the skipped port was redirected");
}

#[test]
fn redirects_nft() {
    if netns::available_or_skip("redirects_nft") {
        redirects("nft");
    }
}

#[test]
fn redirects_legacy() {
    if netns::available_or_skip("redirects_legacy") {
        redirects("legacy");
    }
}
