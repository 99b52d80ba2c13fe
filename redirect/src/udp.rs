//! UDP interception with eBPF: the programs in `bpf/udp.c`, attached as TCX links to every
//! interface of the network namespace, configured through BPF maps, and pinned so they
//! outlive the installer (an init container exits; the interception stays).
//!
//! What is pinned, under `<bpffs>/ringmesh/net-<inode of this netns>/`:
//! - `link_egress_<if>`, `link_ingress_<if>` for each non-loopback interface and
//!   `link_lo_egress`: the attachments (removing the pin detaches);
//! - `settings`, `out_ports`, `in_ports`, `out_cidrs`: what the programs read;
//! - `stats`: per-CPU counters (`mesh-redirect show --udp` prints them);
//! - `unsteered_in`, `unsteered_out`: flows that passed unsteered in (outside the intercepted
//!   range) or out (the proxy's own datagrams, excluded destinations), so their answers pass
//!   unsteered too (LRUs of 65,536 flows, 30 s since the last datagram; what conntrack does
//!   for TCP);
//! - `saved`: the sysctl values install changed, so uninstall can put them back.
//!
//! The sysctls: `accept_local=1` on each non-loopback interface (the outbound program sends a
//! datagram back in through the interface it was leaving, from the interface's own address),
//! and reverse-path filtering loosened to 2 where it was strict (1), since the reverse route of
//! a local source is `lo`. Nothing else is touched.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::LinkOrder;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::{Ebpf, include_bytes_aligned};
use ipnet::{IpNet, Ipv4Net};

use crate::plan::Plan;

/// The compiled programs (built by `build.rs` from `bpf/udp.c`).
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udp.o"));

/// The counters of `bpf/udp.c`'s `enum stat`, in order.
pub const STATS: [&str; 13] = [
    "steered_outbound",
    "steered_inbound",
    "replies_to_app",
    "replies_to_peer",
    "passed_proxy_own",
    "passed_excluded",
    "passed_fragment",
    "passed_ip_options",
    "passed_gso",
    "passed_broadcast",
    "dropped_spoofed_reply",
    "errors",
    "passed_answer",
];

const F_OUTBOUND: u32 = 1;
const F_INBOUND: u32 = 2;
const F_MARK: u32 = 4;
const F_UID: u32 = 8;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What the UDP programs intercept; derived from the TCP [`Plan`] plus the UDP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPlan {
    /// The proxy's outbound UDP port (its outbound relay listens there).
    pub outbound_port: u16,
    /// The proxy's inbound UDP port.
    pub inbound_port: u16,
    pub outbound: bool,
    pub inbound: bool,
    /// Inbound destination ports that are intercepted, inclusive. Datagrams to ports above it
    /// (the ephemeral range, where client sockets live) are replies and go to the app as sent.
    pub inbound_range: (u16, u16),
    pub proxy_uid: Option<u32>,
    pub proxy_mark: Option<u32>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// IPv4 networks not intercepted (IPv6 ones in the plan do not apply: UDP over IPv6 is
    /// not intercepted at all).
    pub exclude_outbound_cidrs: Vec<Ipv4Net>,
}

impl UdpPlan {
    /// The UDP side of `plan`, with `inbound_max` the highest intercepted inbound port.
    pub fn from_plan(plan: &Plan, outbound_port: u16, inbound_port: u16, inbound_max: u16) -> Self {
        UdpPlan {
            outbound_port,
            inbound_port,
            outbound: plan.outbound,
            inbound: plan.inbound,
            inbound_range: (1, inbound_max),
            proxy_uid: plan.proxy_uid,
            proxy_mark: plan.proxy_mark,
            exclude_inbound_ports: plan.exclude_inbound_ports.clone(),
            exclude_outbound_ports: plan.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: plan
                .exclude_outbound_cidrs
                .iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some(*n),
                    IpNet::V6(_) => None,
                })
                .collect(),
        }
    }

    /// The `settings` map value: `struct settings` of `bpf/udp.c`, host byte order.
    fn settings(&self) -> [u8; 20] {
        let mut flags = 0;
        if self.outbound {
            flags |= F_OUTBOUND;
        }
        if self.inbound {
            flags |= F_INBOUND;
        }
        if self.proxy_mark.is_some() {
            flags |= F_MARK;
        }
        if self.proxy_uid.is_some() {
            flags |= F_UID;
        }
        let mut v = [0u8; 20];
        v[0..2].copy_from_slice(&self.outbound_port.to_ne_bytes());
        v[2..4].copy_from_slice(&self.inbound_port.to_ne_bytes());
        v[4..6].copy_from_slice(&self.inbound_range.0.to_ne_bytes());
        v[6..8].copy_from_slice(&self.inbound_range.1.to_ne_bytes());
        v[8..12].copy_from_slice(&self.proxy_mark.unwrap_or(0).to_ne_bytes());
        v[12..16].copy_from_slice(&self.proxy_uid.unwrap_or(0).to_ne_bytes());
        v[16..20].copy_from_slice(&flags.to_ne_bytes());
        v
    }

    /// The plan in words, one line each (for `show`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# UDP: eBPF (TCX) on every interface of this network namespace\n");
        if self.outbound {
            s.push_str(&format!(
                "outbound: datagrams to other hosts -> this host :{}/udp with a PROXY v2 header\n",
                self.outbound_port
            ));
        }
        if self.inbound {
            s.push_str(&format!(
                "inbound: datagrams to local ports {}-{} -> :{}/udp with a PROXY v2 header\n",
                self.inbound_range.0, self.inbound_range.1, self.inbound_port
            ));
        }
        if let Some(m) = self.proxy_mark {
            s.push_str(&format!("proxy's own datagrams pass: mark {m:#x}\n"));
        }
        if let Some(u) = self.proxy_uid {
            s.push_str(&format!("proxy's own datagrams pass: uid {u}\n"));
        }
        for p in &self.exclude_outbound_ports {
            s.push_str(&format!("pass: to port {p}\n"));
        }
        for n in &self.exclude_outbound_cidrs {
            s.push_str(&format!("pass: to {n}\n"));
        }
        for p in &self.exclude_inbound_ports {
            s.push_str(&format!("pass: inbound port {p} (and its answers)\n"));
        }
        s
    }
}

/// Why installing, removing or checking the UDP programs failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpError {
    #[error(
        "{path} is not a BPF filesystem and mounting one there failed ({source}); mount it \
         (mount -t bpf bpf {path}) or, inside a network namespace, run with `nsenter --net=` \
         rather than `ip netns exec` (which hides /sys/fs/bpf)"
    )]
    NoBpffs { path: String, source: nix::Error },
    #[error(
        "{path} is not a BPF filesystem, and this process runs in a mount namespace of its own \
         (`ip netns exec`, or a container), where a BPF filesystem mounted now would vanish \
         with it and take the interception along; give it the host's (in Kubernetes, a \
         hostPath volume for /sys/fs/bpf) or run with `nsenter --net=` instead"
    )]
    PrivateMountNs { path: String },
    #[error(
        "the kernel refused the eBPF programs: {0}; loading needs CAP_BPF and CAP_NET_ADMIN \
         (root), and a kernel with BTF and TCX (6.6 or later)"
    )]
    Load(String),
    #[error("attaching to {iface} ({kind}) failed: {detail}")]
    Attach {
        iface: String,
        kind: &'static str,
        detail: String,
    },
    #[error("{what}: {detail}")]
    Io { what: String, detail: String },
}

fn io(what: impl Into<String>, e: impl std::fmt::Display) -> UdpError {
    UdpError::Io {
        what: what.into(),
        detail: e.to_string(),
    }
}

/// Where this network namespace's pins live.
pub fn pin_dir(bpffs: &Path) -> Result<PathBuf, UdpError> {
    let ino = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| io("/proc/self/ns/net", e))?
        .ino();
    Ok(bpffs.join("ringmesh").join(format!("net-{ino}")))
}

/// Whether the UDP programs are installed in this network namespace.
pub fn installed(bpffs: &Path) -> Result<bool, UdpError> {
    Ok(pin_dir(bpffs)?.join("settings").exists())
}

fn ensure_bpffs(bpffs: &Path) -> Result<(), UdpError> {
    let is_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if is_bpffs(bpffs) {
        return Ok(());
    }
    // A wrapper that gave us a mount namespace of our own (`ip netns exec`, `unshare -m`)
    // shows as ours differing from our parent's; a bpffs mounted there would vanish with it.
    // (PID 1's may not be readable, so the parent is what is compared.)
    let mnt_ns = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    let parent = format!("/proc/{}/ns/mnt", nix::unistd::getppid());
    if let (Some(own), Some(parent)) = (mnt_ns("/proc/self/ns/mnt"), mnt_ns(&parent))
        && own != parent
    {
        return Err(UdpError::PrivateMountNs {
            path: bpffs.display().to_string(),
        });
    }
    std::fs::create_dir_all(bpffs).map_err(|e| io(bpffs.display().to_string(), e))?;
    // Two installers at once must not both mount (the second mount would hide the first's
    // pins): one at a time, and the second finds it mounted.
    let lock_path = std::env::temp_dir().join("ringmesh-redirect-bpffs.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| io(lock_path.display().to_string(), e))?;
    let _locked = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(lock_path.display().to_string(), e))?;
    if is_bpffs(bpffs) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        bpffs,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| UdpError::NoBpffs {
        path: bpffs.display().to_string(),
        source,
    })
}

/// The non-loopback interfaces of this network namespace.
pub fn interfaces() -> Result<Vec<String>, UdpError> {
    let list = nix::net::if_::if_nameindex().map_err(|e| io("listing interfaces", e))?;
    let mut names: Vec<String> = list
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

fn read_sysctl(name: &str) -> Result<i32, UdpError> {
    let p = sysctl_path(name);
    let text = std::fs::read_to_string(&p).map_err(|e| io(p.display().to_string(), e))?;
    text.trim()
        .parse()
        .map_err(|e| io(p.display().to_string(), e))
}

fn write_sysctl(name: &str, value: i32) -> Result<(), UdpError> {
    let p = sysctl_path(name);
    std::fs::write(&p, format!("{value}\n")).map_err(|e| io(p.display().to_string(), e))
}

/// The sysctl values the programs need, for these interfaces: name → value.
fn wanted_sysctls(ifaces: &[String]) -> Result<BTreeMap<String, i32>, UdpError> {
    let mut want = BTreeMap::new();
    let all_rp = read_sysctl("net/ipv4/conf/all/rp_filter")?;
    if all_rp == 1 {
        want.insert("net/ipv4/conf/all/rp_filter".to_string(), 2);
    }
    for i in ifaces {
        want.insert(format!("net/ipv4/conf/{i}/accept_local"), 1);
        if read_sysctl(&format!("net/ipv4/conf/{i}/rp_filter"))? == 1 {
            want.insert(format!("net/ipv4/conf/{i}/rp_filter"), 2);
        }
    }
    Ok(want)
}

fn sysctl_key(name: &str) -> [u8; 64] {
    let mut k = [0u8; 64];
    let b = name.as_bytes();
    let n = b.len().min(63);
    k[..n].copy_from_slice(&b[..n]);
    k
}

fn sysctl_name(k: &[u8; 64]) -> String {
    let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
    String::from_utf8_lossy(&k[..end]).into_owned()
}

fn map_from_pin(dir: &Path, name: &str) -> Result<MapData, UdpError> {
    MapData::from_pin(dir.join(name)).map_err(|e| io(format!("pinned map {name}"), e))
}

/// Loads the programs, fills their maps from `plan`, attaches them to every interface and
/// pins it all. Installing again replaces the earlier installation (one copy, sysctls put
/// back first so the saved values stay the original ones).
pub fn install(plan: &UdpPlan, bpffs: &Path) -> Result<(), UdpError> {
    ensure_bpffs(bpffs)?;
    if installed(bpffs)? {
        uninstall(bpffs)?;
    }
    let dir = pin_dir(bpffs)?;
    let ifaces = interfaces()?;
    let mut bpf = Ebpf::load(OBJECT).map_err(|e| UdpError::Load(format!("{e:#}")))?;
    fill_maps(&mut bpf, plan)?;

    std::fs::create_dir_all(&dir).map_err(|e| io(dir.display().to_string(), e))?;
    let result = (|| {
        // Settings first (the programs pass everything until they can read them), links last.
        for name in [
            "settings",
            "out_ports",
            "in_ports",
            "out_cidrs",
            "stats",
            "saved",
            "unsteered_in",
            "unsteered_out",
        ] {
            let map = bpf
                .map(name)
                .ok_or_else(|| io(format!("map {name}"), "missing from the object"))?;
            map.pin(dir.join(name))
                .map_err(|e| io(format!("pinning map {name}"), e))?;
        }
        let want = wanted_sysctls(&ifaces)?;
        {
            let saved = bpf
                .map_mut("saved")
                .ok_or_else(|| io("map saved", "missing from the object"))?;
            let mut saved: HashMap<_, [u8; 64], i32> =
                HashMap::try_from(saved).map_err(|e| io("map saved", e))?;
            for name in want.keys() {
                let old = read_sysctl(name)?;
                saved
                    .insert(sysctl_key(name), old, 0)
                    .map_err(|e| io("map saved", e))?;
            }
        }
        for (name, value) in &want {
            write_sysctl(name, *value)?;
        }
        for (prog, attach, ifs, prefix) in [
            (
                "udp_egress",
                TcAttachType::Egress,
                ifaces.clone(),
                "link_egress_",
            ),
            (
                "udp_ingress",
                TcAttachType::Ingress,
                ifaces.clone(),
                "link_ingress_",
            ),
            (
                "udp_lo",
                TcAttachType::Egress,
                vec!["lo".to_string()],
                "link_",
            ),
        ] {
            let p: &mut SchedClassifier = bpf
                .program_mut(prog)
                .ok_or_else(|| io(format!("program {prog}"), "missing from the object"))?
                .try_into()
                .map_err(|e| io(format!("program {prog}"), e))?;
            p.load()
                .map_err(|e| UdpError::Load(format!("{prog}: {e:#}")))?;
            for iface in ifs {
                let kind = if attach == TcAttachType::Egress {
                    "egress"
                } else {
                    "ingress"
                };
                let id = p
                    .attach_with_options(
                        &iface,
                        attach,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| UdpError::Attach {
                        iface: iface.clone(),
                        kind,
                        detail: format!("{e:#}"),
                    })?;
                let link = p.take_link(id).map_err(|e| UdpError::Attach {
                    iface: iface.clone(),
                    kind,
                    detail: format!("{e:#}"),
                })?;
                let link: FdLink = link.try_into().map_err(|e| UdpError::Attach {
                    iface: iface.clone(),
                    kind,
                    detail: format!("{e:#}"),
                })?;
                let pin = if iface == "lo" {
                    dir.join("link_lo_egress")
                } else {
                    dir.join(format!("{prefix}{iface}"))
                };
                link.pin(&pin)
                    .map_err(|e| io(format!("pinning {}", pin.display()), e))?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // Leave nothing half-installed: whatever was pinned and changed goes back.
        let _ = uninstall(bpffs);
    }
    result
}

fn fill_maps(bpf: &mut Ebpf, plan: &UdpPlan) -> Result<(), UdpError> {
    let mut settings: Array<_, [u8; 20]> = Array::try_from(
        bpf.map_mut("settings")
            .ok_or_else(|| io("map settings", "missing"))?,
    )
    .map_err(|e| io("map settings", e))?;
    settings
        .set(0, plan.settings(), 0)
        .map_err(|e| io("map settings", e))?;
    for (name, ports) in [
        ("out_ports", &plan.exclude_outbound_ports),
        ("in_ports", &plan.exclude_inbound_ports),
    ] {
        let mut m: HashMap<_, u16, u8> = HashMap::try_from(
            bpf.map_mut(name)
                .ok_or_else(|| io(format!("map {name}"), "missing"))?,
        )
        .map_err(|e| io(format!("map {name}"), e))?;
        for p in ports {
            m.insert(p, 1, 0)
                .map_err(|e| io(format!("map {name}"), e))?;
        }
    }
    let mut cidrs: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(
        bpf.map_mut("out_cidrs")
            .ok_or_else(|| io("map out_cidrs", "missing"))?,
    )
    .map_err(|e| io("map out_cidrs", e))?;
    for n in &plan.exclude_outbound_cidrs {
        let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
        cidrs
            .insert(&key, 1, 0)
            .map_err(|e| io("map out_cidrs", e))?;
    }
    Ok(())
}

/// Detaches and unpins everything install pinned in this network namespace, and puts the
/// sysctls back. Nothing installed is not an error.
pub fn uninstall(bpffs: &Path) -> Result<(), UdpError> {
    let dir = pin_dir(bpffs)?;
    if !dir.exists() {
        return Ok(());
    }
    let mut errors = Vec::new();
    if dir.join("saved").exists() {
        match map_from_pin(&dir, "saved").and_then(|m| {
            HashMap::<_, [u8; 64], i32>::try_from(Map::HashMap(m)).map_err(|e| io("map saved", e))
        }) {
            Ok(saved) => {
                for (k, v) in saved.iter().flatten() {
                    let name = sysctl_name(&k);
                    // An interface that is gone took its settings with it.
                    if !sysctl_path(&name).exists() {
                        continue;
                    }
                    if let Err(e) = write_sysctl(&name, v) {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| io(dir.display().to_string(), e))?;
    let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    // Links first: once they are gone the programs stop running, then the maps can go.
    names.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in names {
        let is_link = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"));
        let r = if is_link {
            PinnedLink::from_pin(&p)
                .map_err(|e| e.to_string())
                .and_then(|l| l.unpin().map(drop).map_err(|e| e.to_string()))
        } else {
            std::fs::remove_file(&p).map_err(|e| e.to_string())
        };
        if let Err(e) = r {
            errors.push(format!("{}: {e}", p.display()));
        }
    }
    if let Err(e) = std::fs::remove_dir(&dir) {
        errors.push(format!("{}: {e}", dir.display()));
    }
    let _ = std::fs::remove_dir(dir.parent().unwrap_or(&dir));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(io("uninstall", errors.join("; ")))
    }
}

/// Compares what is installed with `plan`: an empty list when they agree, else one line per
/// difference.
pub fn verify(plan: &UdpPlan, bpffs: &Path) -> Result<Vec<String>, UdpError> {
    let dir = pin_dir(bpffs)?;
    let mut diff = Vec::new();
    if !dir.join("settings").exists() {
        diff.push(format!(
            "- UDP programs (nothing pinned at {})",
            dir.display()
        ));
        return Ok(diff);
    }
    let settings: Array<_, [u8; 20]> = Array::try_from(Map::Array(map_from_pin(&dir, "settings")?))
        .map_err(|e| io("map settings", e))?;
    if settings.get(&0, 0).map_err(|e| io("map settings", e))? != plan.settings() {
        diff.push("~ UDP settings (ports, mark, uid or directions) differ from the plan".into());
    }
    for (name, ports) in [
        ("out_ports", &plan.exclude_outbound_ports),
        ("in_ports", &plan.exclude_inbound_ports),
    ] {
        let m: HashMap<_, u16, u8> = HashMap::try_from(Map::HashMap(map_from_pin(&dir, name)?))
            .map_err(|e| io(format!("map {name}"), e))?;
        let have: std::collections::BTreeSet<u16> = m.keys().flatten().collect();
        let want: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        for p in want.difference(&have) {
            diff.push(format!("- UDP {name} {p}"));
        }
        for p in have.difference(&want) {
            diff.push(format!("+ UDP {name} {p}"));
        }
    }
    let cidrs: LpmTrie<_, [u8; 4], u8> =
        LpmTrie::try_from(Map::LpmTrie(map_from_pin(&dir, "out_cidrs")?))
            .map_err(|e| io("map out_cidrs", e))?;
    let have: std::collections::BTreeSet<Ipv4Net> = cidrs
        .keys()
        .flatten()
        .filter_map(|k| Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8).ok())
        .collect();
    let want: std::collections::BTreeSet<Ipv4Net> =
        plan.exclude_outbound_cidrs.iter().copied().collect();
    for n in want.difference(&have) {
        diff.push(format!("- UDP excluded network {n}"));
    }
    for n in have.difference(&want) {
        diff.push(format!("+ UDP excluded network {n}"));
    }
    let ifaces = interfaces()?;
    let mut links = vec!["link_lo_egress".to_string()];
    for i in &ifaces {
        links.push(format!("link_egress_{i}"));
        links.push(format!("link_ingress_{i}"));
    }
    for l in links {
        if !dir.join(&l).exists() {
            diff.push(format!("- UDP attachment {l}"));
        }
    }
    for (name, value) in wanted_sysctls(&ifaces)? {
        // rp_filter is only ever in the list while strict, i.e. loosened by someone else's
        // reset; accept_local must read 1.
        if !name.ends_with("rp_filter") && read_sysctl(&name)? != value {
            diff.push(format!("~ sysctl {name} is not {value}"));
        }
    }
    Ok(diff)
}

/// The programs' counters, summed over CPUs, by name (empty when not installed).
pub fn stats(bpffs: &Path) -> Result<Vec<(&'static str, u64)>, UdpError> {
    let dir = pin_dir(bpffs)?;
    if !dir.join("stats").exists() {
        return Ok(Vec::new());
    }
    let m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(map_from_pin(&dir, "stats")?))
            .map_err(|e| io("map stats", e))?;
    let mut out = Vec::new();
    for (i, name) in STATS.iter().enumerate() {
        let v = m.get(&(i as u32), 0).map_err(|e| io("map stats", e))?;
        out.push((*name, v.iter().sum()));
    }
    Ok(out)
}

/// The highest inbound port to intercept: one below the start of this namespace's ephemeral
/// port range (`net.ipv4.ip_local_port_range`), where client sockets are bound.
pub fn default_inbound_max() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|s| s.parse::<u16>().ok())
        })
        .map_or(32767, |start| start.saturating_sub(1))
}
