//! `mesh-redirect` against the real kernel: each case gets a fresh network namespace, installs,
//! verifies, reinstalls, tampers, uninstalls. Needs root; fails (never skips) without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace that is deleted when dropped, even when the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let uid = unsafe_free_euid();
        assert_eq!(
            uid, 0,
            "these tests program netfilter and need root (run `make test` as root)"
        );
        let name = format!(
            "rmk-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip (iproute2) runs");
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(name)
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, prog])
            .args(args)
            .output()
            .unwrap()
    }

    fn redirect(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_mesh-redirect"), args)
    }

    fn sh(&self, script: &str) -> String {
        let out = self.run("sh", &["-c", script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The effective uid, read from /proc so the test needs no unsafe code.
fn unsafe_free_euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const PLANS: [&[&str]; 3] = [
    &[],
    &[
        "--proxy-uid",
        "1337",
        "--proxy-mark",
        "0x539",
        "--exclude-inbound-ports",
        "22,15020",
        "--exclude-outbound-ports",
        "53,8126",
        "--exclude-outbound-cidrs",
        "10.0.0.0/8,169.254.169.254/32,fd00::/8",
    ],
    &[
        "--proxy-uid",
        "1500",
        "--no-mark",
        "--exclude-outbound-ports",
        "22",
        "--no-ipv6",
    ],
];

fn lifecycle(backend: &'static str, dump: &str) {
    for plan in PLANS {
        let ns = Netns::new();
        let args = |cmd: &'static str| {
            let mut v = vec![cmd, "--backend", backend];
            v.extend_from_slice(plan);
            v
        };
        let verify = ns.redirect(&args("verify"));
        assert!(!ok(&verify), "verify must fail before install");

        let install = ns.redirect(&args("install"));
        assert!(ok(&install), "install {plan:?}: {}", text(&install));
        let verify = ns.redirect(&args("verify"));
        assert!(
            ok(&verify),
            "verify after install {plan:?}: {}",
            text(&verify)
        );

        let first = ns.sh(dump);
        let again = ns.redirect(&args("install"));
        assert!(ok(&again), "{}", text(&again));
        let second = ns.sh(dump);
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            strip(&first),
            strip(&second),
            "installing twice leaves one copy"
        );
        assert!(ok(&ns.redirect(&args("verify"))));

        // A different plan is told apart.
        let mut other = args("verify");
        other.extend(["--outbound-port", "16001"]);
        let differs = ns.redirect(&other);
        assert!(!ok(&differs), "verify must notice a different port");
        assert!(text(&differs).contains("16001"), "{}", text(&differs));

        let un = ns.redirect(&["uninstall", "--backend", backend]);
        assert!(ok(&un), "{}", text(&un));
        let after = ns.sh(dump);
        assert!(
            !after.contains("RINGMESH") && !after.contains("ringmesh"),
            "uninstall left:\n{after}"
        );
        assert!(
            !ok(&ns.redirect(&args("verify"))),
            "verify must fail after uninstall"
        );
        let un2 = ns.redirect(&["uninstall", "--backend", backend]);
        assert!(ok(&un2), "uninstall is idempotent: {}", text(&un2));
    }
}

#[test]
fn iptables_lifecycle() {
    lifecycle("iptables", "iptables-save -t nat; ip6tables-save -t nat");
}

#[test]
fn nftables_lifecycle() {
    lifecycle("nftables", "nft list ruleset");
}

#[test]
fn iptables_uninstall_leaves_foreign_rules() {
    let ns = Netns::new();
    ns.sh("iptables -t nat -N OTHER; iptables -t nat -A OUTPUT -p udp -j OTHER; iptables -t nat -A OTHER -j RETURN");
    assert!(ok(&ns.redirect(&["install", "--backend", "iptables"])));
    assert!(ok(&ns.redirect(&["uninstall", "--backend", "iptables"])));
    let left = ns.sh("iptables-save -t nat");
    assert!(left.contains("-A OUTPUT -p udp -j OTHER"), "{left}");
    assert!(left.contains("-A OTHER -j RETURN"), "{left}");
    assert!(!left.contains("RINGMESH"), "{left}");
}

#[test]
fn tampering_is_detected() {
    let ns = Netns::new();
    assert!(ok(&ns.redirect(&["install", "--backend", "nftables"])));
    ns.sh("nft add rule inet ringmesh output tcp dport 9999 return");
    let v = ns.redirect(&["verify", "--backend", "nftables"]);
    assert!(!ok(&v));
    assert!(text(&v).contains("+ tcp dport 9999 return"), "{}", text(&v));

    let ns = Netns::new();
    assert!(ok(&ns.redirect(&["install", "--backend", "iptables"])));
    ns.sh("iptables -t nat -D PREROUTING -p tcp -j RINGMESH_PREROUTING");
    let v = ns.redirect(&["verify", "--backend", "iptables"]);
    assert!(!ok(&v));
    assert!(
        text(&v).contains("- -A PREROUTING -p tcp -j RINGMESH_PREROUTING"),
        "{}",
        text(&v)
    );
}

#[test]
fn bad_plans_are_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-redirect"))
        .args(["install", "--no-mark"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("--proxy-uid, --proxy-mark"),
        "{}",
        text(&out)
    );
}

impl Netns {
    /// Like [`run`](Self::run), with `nsenter --net` (which keeps the host's /sys/fs/bpf;
    /// `ip netns exec` hides it, and the UDP programs need it to pin).
    fn nsenter(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .arg(prog)
            .args(args)
            .output()
            .unwrap()
    }

    fn pin_dir(&self) -> std::path::PathBuf {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/run/netns/{}", self.0))
            .unwrap()
            .ino();
        std::path::PathBuf::from(format!("/sys/fs/bpf/ringmesh/net-{ino}"))
    }
}

/// The UDP programs pass this kernel's verifier, attach to every interface, verify, show
/// their counters, and leave nothing behind: no link, pin, program or changed sysctl.
#[test]
fn udp_programs_load_attach_and_leave_nothing() {
    let ns = Netns::new();
    let setup = ns.sh(
        "ip link set lo up && ip link add rk0 type veth peer name rk1 && ip link set rk0 up && \
         ip link set rk1 up && sysctl -qw net.ipv4.conf.rk0.rp_filter=1 && echo ok",
    );
    assert_eq!(setup.trim(), "ok");
    let sysctls = |ns: &Netns| {
        ns.sh("sysctl -n net.ipv4.conf.rk0.accept_local net.ipv4.conf.rk1.accept_local net.ipv4.conf.rk0.rp_filter net.ipv4.conf.all.rp_filter")
    };
    let before = sysctls(&ns);
    let redirect = env!("CARGO_BIN_EXE_mesh-redirect");
    let plan = [
        "--backend",
        "nftables",
        "--udp",
        "--exclude-outbound-ports",
        "5353",
        "--exclude-outbound-cidrs",
        "10.9.0.0/16,fd00::/8",
    ];
    let mut install = vec!["install"];
    install.extend_from_slice(&plan);
    let out = ns.nsenter(redirect, &install);
    assert!(ok(&out), "{}", text(&out));
    // Twice leaves one copy.
    let out = ns.nsenter(redirect, &install);
    assert!(ok(&out), "{}", text(&out));

    let dir = ns.pin_dir();
    for pin in [
        "settings",
        "stats",
        "saved",
        "link_lo_egress",
        "link_egress_rk0",
        "link_ingress_rk1",
    ] {
        assert!(
            dir.join(pin).exists(),
            "{pin} not pinned in {}",
            dir.display()
        );
    }
    // Each pinned link is a live TCX attachment of one of our programs.
    let mut prog_ids = Vec::new();
    let mut names = Vec::new();
    for pin in [
        "link_lo_egress",
        "link_egress_rk0",
        "link_egress_rk1",
        "link_ingress_rk0",
        "link_ingress_rk1",
    ] {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(dir.join(pin))
            .output()
            .unwrap();
        assert!(ok(&out), "{pin}: {}", text(&out));
        let link = String::from_utf8_lossy(&out.stdout).into_owned();
        let id = link
            .split("\"prog_id\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap_or_else(|| panic!("no prog_id in {link}"))
            .to_string();
        let prog = Command::new("bpftool")
            .args(["prog", "show", "id", &id])
            .output()
            .unwrap();
        names.push(
            text(&prog)
                .split_whitespace()
                .nth(3)
                .unwrap_or("")
                .to_string(),
        );
        prog_ids.push(id);
    }
    assert_eq!(
        names,
        [
            "udp_lo",
            "udp_egress",
            "udp_egress",
            "udp_ingress",
            "udp_ingress"
        ]
    );
    let after = sysctls(&ns);
    assert_eq!(
        after.split_whitespace().collect::<Vec<_>>(),
        ["1", "1", "2", after.split_whitespace().nth(3).unwrap()],
        "accept_local on, strict rp_filter loosened"
    );

    let mut verify = vec!["verify"];
    verify.extend_from_slice(&plan);
    let out = ns.nsenter(redirect, &verify);
    assert!(ok(&out), "{}", text(&out));
    // A different plan is a difference.
    let out = ns.nsenter(
        redirect,
        &[
            "verify",
            "--backend",
            "nftables",
            "--udp",
            "--udp-outbound-port",
            "15999",
        ],
    );
    assert!(!ok(&out), "a changed port verifies: {}", text(&out));
    assert!(text(&out).contains("UDP settings"), "{}", text(&out));

    let out = ns.nsenter(redirect, &["show", "--backend", "nftables", "--udp"]);
    let shown = text(&out);
    assert!(shown.contains("# UDP programs installed"), "{shown}");
    assert!(shown.contains("# steered_outbound 0"), "{shown}");

    // Under `ip netns exec` there is no BPF filesystem to pin into: a clear refusal.
    let out = ns.redirect(&install);
    assert!(!ok(&out));
    assert!(text(&out).contains("nsenter --net="), "{}", text(&out));

    let out = ns.nsenter(redirect, &["uninstall", "--backend", "nftables"]);
    assert!(ok(&out), "{}", text(&out));
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(sysctls(&ns), before, "sysctls restored");
    for id in prog_ids {
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id])
            .output()
            .unwrap();
        assert!(!ok(&out), "program {id} still loaded: {}", text(&out));
    }
    let out = ns.nsenter(redirect, &["verify", "--backend", "nftables", "--udp"]);
    assert!(!ok(&out));
}
