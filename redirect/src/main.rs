//! `mesh-redirect`: install, uninstall or verify the interception rules.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::path::PathBuf;

use ringmesh_redirect::udp::{self, UdpPlan};
use ringmesh_redirect::{Backend, Plan, apply};

/// Send a pod's (or host's) TCP traffic to its ringmesh proxy, with iptables or nftables.
///
/// Acts on the network namespace it runs in, and needs CAP_NET_ADMIN there. Outbound TCP is
/// redirected to --outbound-port, inbound TCP to --inbound-port; the proxy's own connections
/// pass by uid (--proxy-uid) and/or socket mark (--proxy-mark), and so do excluded ports and
/// networks. Loopback destinations are never redirected.
#[derive(Debug, Parser)]
#[command(name = "mesh-redirect", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the rules (again: installing twice leaves one copy).
    Install(PlanArgs),
    /// Remove exactly what install added (the TCP rules of --backend, and the UDP programs
    /// if they are installed).
    Uninstall {
        #[arg(long, value_enum, default_value_t = BackendArg::Iptables)]
        backend: BackendArg,
        /// Where the BPF filesystem is mounted.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: PathBuf,
    },
    /// Exit 0 if the installed rules are exactly the plan's, else print the differences and
    /// exit 1.
    Verify(PlanArgs),
    /// Print the rule set install would apply, without applying it.
    Show(PlanArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    /// iptables-restore and ip6tables-restore (chains RINGMESH_OUTPUT, RINGMESH_PREROUTING).
    Iptables,
    /// nft (table inet ringmesh).
    Nftables,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Iptables => Backend::Iptables,
            BackendArg::Nftables => Backend::Nftables,
        }
    }
}

#[derive(Debug, Args)]
struct PlanArgs {
    #[arg(long, value_enum, default_value_t = BackendArg::Iptables)]
    backend: BackendArg,
    /// The proxy's outbound listener port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// The proxy's inbound listener port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Let traffic from this uid pass (the uid the proxy runs as).
    #[arg(long)]
    proxy_uid: Option<u32>,
    /// Let traffic with this socket mark pass (the proxy's bypass_mark; 0x539 = 1337 is its
    /// default). Decimal or 0x-hex.
    #[arg(long, value_parser = parse_mark)]
    proxy_mark: Option<u32>,
    /// Do not use the default mark 1337 when --proxy-mark is not given.
    #[arg(long)]
    no_mark: bool,
    /// Inbound ports that reach the app directly (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports that are not intercepted (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks that are not intercepted (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<IpNet>,
    /// Do not intercept outbound traffic.
    #[arg(long)]
    no_outbound: bool,
    /// Do not intercept inbound traffic.
    #[arg(long)]
    no_inbound: bool,
    /// Intercept IPv4 only.
    #[arg(long)]
    no_ipv6: bool,
    /// Intercept UDP too (IPv4), with eBPF programs: outbound datagrams to
    /// --udp-outbound-port, inbound ones to --udp-inbound-port, each with a PROXY v2 header
    /// carrying its original addresses.
    #[arg(long)]
    udp: bool,
    /// The proxy's outbound UDP port (default: --outbound-port).
    #[arg(long)]
    udp_outbound_port: Option<u16>,
    /// The proxy's inbound UDP port (default: --inbound-port).
    #[arg(long)]
    udp_inbound_port: Option<u16>,
    /// The highest inbound UDP port intercepted (default: one below the start of
    /// net.ipv4.ip_local_port_range; ports above it belong to client sockets, whose answers
    /// arrive there).
    #[arg(long)]
    udp_inbound_max: Option<u16>,
    /// Where the BPF filesystem is mounted (mounted there if it is not).
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

impl PlanArgs {
    fn udp_plan(&self, plan: &Plan) -> Option<UdpPlan> {
        self.udp.then(|| {
            UdpPlan::from_plan(
                plan,
                self.udp_outbound_port.unwrap_or(plan.outbound_port),
                self.udp_inbound_port.unwrap_or(plan.inbound_port),
                self.udp_inbound_max
                    .unwrap_or_else(udp::default_inbound_max),
            )
        })
    }
}

impl PlanArgs {
    fn plan(&self) -> Result<Plan, ringmesh_redirect::PlanError> {
        let default = Plan::default();
        Plan {
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            outbound: !self.no_outbound,
            inbound: !self.no_inbound,
            proxy_uid: self.proxy_uid,
            proxy_mark: if self.no_mark {
                None
            } else {
                self.proxy_mark.or(default.proxy_mark)
            },
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
            ipv6: !self.no_ipv6,
        }
        .validate()
    }
}

fn install(
    plan: &Plan,
    backend: Backend,
    udp_plan: Option<&UdpPlan>,
    bpffs: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    apply::install(plan, backend)?;
    println!(
        "mesh-redirect: interception installed ({backend:?}): outbound -> :{}, inbound -> :{}",
        plan.outbound_port, plan.inbound_port
    );
    if let Some(u) = udp_plan {
        if let Err(e) = udp::install(u, bpffs) {
            // One step: TCP without the UDP the caller asked for is not an installation.
            let _ = apply::uninstall(backend);
            return Err(e.into());
        }
        println!(
            "mesh-redirect: UDP interception installed (eBPF): outbound -> :{}/udp, inbound ports {}-{} -> :{}/udp",
            u.outbound_port, u.inbound_range.0, u.inbound_range.1, u.inbound_port
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The counters of installed UDP programs, as `# name value` lines after the plan.
fn show_udp_stats(bpffs: &std::path::Path) {
    match udp::stats(bpffs) {
        Ok(s) if s.is_empty() => {
            println!("# UDP programs: not installed in this network namespace")
        }
        Ok(s) => {
            println!("# UDP programs installed; counters:");
            for (name, v) in s {
                println!("# {name} {v}");
            }
        }
        Err(e) => println!("# UDP counters unavailable: {e}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Uninstall { backend, bpffs } => apply::uninstall((*backend).into())
            .map_err(anyhow::Error::from)
            .and_then(|()| udp::uninstall(bpffs).map_err(anyhow::Error::from))
            .map(|()| {
                println!("mesh-redirect: interception removed");
                ExitCode::SUCCESS
            }),
        Cmd::Install(a) | Cmd::Verify(a) | Cmd::Show(a) => {
            let plan = match a.plan() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("mesh-redirect: {e}");
                    return ExitCode::from(2);
                }
            };
            let backend: Backend = a.backend.into();
            let udp_plan = a.udp_plan(&plan);
            match &cli.command {
                Cmd::Install(_) => install(&plan, backend, udp_plan.as_ref(), &a.bpffs),
                Cmd::Verify(_) => apply::verify(&plan, backend).map_err(anyhow::Error::from).and_then(|mut diff| {
                    if let Some(u) = &udp_plan {
                        diff.extend(udp::verify(u, &a.bpffs)?);
                    }
                    if diff.is_empty() {
                        println!("mesh-redirect: rules match the plan");
                        Ok(ExitCode::SUCCESS)
                    } else {
                        eprintln!("mesh-redirect: rules differ from the plan (- missing, + unexpected):");
                        for d in diff {
                            eprintln!("  {d}");
                        }
                        Ok(ExitCode::from(1))
                    }
                }),
                _ => {
                    print!("{}", apply::render(&plan, backend));
                    if let Some(u) = &udp_plan {
                        print!("{}", u.render());
                        show_udp_stats(&a.bpffs);
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("mesh-redirect: {e:#}");
        ExitCode::from(1)
    })
}
