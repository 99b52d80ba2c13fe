//! Running the rule tools: `iptables-save`/`iptables-restore` (and the ip6 pair) or `nft`.
//! All the thinking happens in the pure functions of [`iptables`](crate::iptables) and
//! [`nftables`](crate::nftables); this module only feeds them and reports what failed.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::plan::{Backend, Plan};
use crate::{iptables, nftables};

/// Why a rule tool failed. Each message names the cause and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("{tool} not found: install Debian's `{package}` package (apt-get install {package})")]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "{tool} was refused: {stderr}; changing packet filter rules needs CAP_NET_ADMIN in this \
         network namespace (run as root, or grant the capability to the init container)"
    )]
    Permission { tool: &'static str, stderr: String },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: &'static str,
        status: String,
        stderr: String,
    },
}

fn package(tool: &str) -> &'static str {
    if tool.starts_with("nft") {
        "nftables"
    } else {
        "iptables"
    }
}

/// Runs `tool args`, feeding `input` on stdin; returns stdout.
fn run(tool: &'static str, args: &[&str], input: Option<&str>) -> Result<String, ApplyError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApplyError::Missing {
                tool,
                package: package(tool),
            },
            _ => ApplyError::Failed {
                tool,
                status: "not started".into(),
                stderr: e.to_string(),
            },
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| ApplyError::Failed {
        tool,
        status: "wait".into(),
        stderr: e.to_string(),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
            return Err(ApplyError::Permission { tool, stderr });
        }
        return Err(ApplyError::Failed {
            tool,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Family {
    v6: bool,
    save: &'static str,
    restore: &'static str,
    label: &'static str,
}

const FAMILIES: [Family; 2] = [
    Family {
        v6: false,
        save: "iptables-save",
        restore: "iptables-restore",
        label: "ipv4",
    },
    Family {
        v6: true,
        save: "ip6tables-save",
        restore: "ip6tables-restore",
        label: "ipv6",
    },
];

/// A plan that intercepts nothing: what a family the plan leaves out must hold.
fn nothing(plan: &Plan) -> Plan {
    Plan {
        outbound: false,
        inbound: false,
        ..plan.clone()
    }
}

/// Installs the plan; installing twice leaves one copy.
pub fn install(plan: &Plan, backend: Backend) -> Result<(), ApplyError> {
    match backend {
        Backend::Iptables => {
            for f in &FAMILIES {
                let save = run(f.save, &["-t", "nat"], None)?;
                let effective = if f.v6 && !plan.ipv6 {
                    nothing(plan)
                } else {
                    plan.clone()
                };
                let script = iptables::install_script(&effective, f.v6, &save);
                run(f.restore, &["--noflush"], Some(&script))?;
            }
            Ok(())
        }
        Backend::Nftables => {
            run("nft", &["-f", "-"], Some(&nftables::install_script(plan))).map(drop)
        }
    }
}

/// Removes what install added, and nothing else; a no-op when nothing is installed.
pub fn uninstall(backend: Backend) -> Result<(), ApplyError> {
    match backend {
        Backend::Iptables => {
            for f in &FAMILIES {
                let save = run(f.save, &["-t", "nat"], None)?;
                if let Some(script) = iptables::uninstall_script(&save) {
                    run(f.restore, &["--noflush"], Some(&script))?;
                }
            }
            Ok(())
        }
        Backend::Nftables => {
            run("nft", &["-f", "-"], Some(&nftables::uninstall_script())).map(drop)
        }
    }
}

/// What differs between the kernel's rules and the plan; empty when they agree.
pub fn verify(plan: &Plan, backend: Backend) -> Result<Vec<String>, ApplyError> {
    match backend {
        Backend::Iptables => {
            let mut out = Vec::new();
            for f in &FAMILIES {
                let save = run(f.save, &["-t", "nat"], None)?;
                let effective = if f.v6 && !plan.ipv6 {
                    nothing(plan)
                } else {
                    plan.clone()
                };
                out.extend(
                    iptables::diff(&effective, f.v6, &save)
                        .into_iter()
                        .map(|d| format!("{}: {d}", f.label)),
                );
            }
            Ok(out)
        }
        Backend::Nftables => {
            let listing = match run("nft", &["list", "table", "inet", "ringmesh"], None) {
                Ok(l) => l,
                Err(ApplyError::Failed { stderr, .. }) if stderr.contains("No such file") => {
                    String::new()
                }
                Err(e) => return Err(e),
            };
            Ok(nftables::diff(plan, &listing))
        }
    }
}

/// The rule text install would apply, for `mesh-redirect show`.
pub fn render(plan: &Plan, backend: Backend) -> String {
    match backend {
        Backend::Iptables => {
            let mut s = String::new();
            for f in &FAMILIES {
                if f.v6 && !plan.ipv6 {
                    continue;
                }
                s.push_str(&format!("# {} (iptables-restore --noflush)\n", f.restore));
                s.push_str(&iptables::install_script(plan, f.v6, ""));
            }
            s
        }
        Backend::Nftables => nftables::install_script(plan),
    }
}
