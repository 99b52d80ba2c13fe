//! Interception: the rules that send a pod's (or host's) TCP traffic to its proxy, and the
//! eBPF programs that do the same for UDP ([`udp`]).
//!
//! A [`Plan`] says what to intercept and what to let pass (the proxy's own traffic, by uid or
//! socket mark; excluded ports and CIDRs). Pure functions turn a plan into an iptables
//! (`iptables-restore`) or nftables (`nft -f`) rule set; [`apply`] runs the tools. Install is
//! idempotent, uninstall removes exactly what install added, and verify compares what the
//! kernel holds with what the plan says, line by line.
//!
//! Everything acts on the network namespace the process runs in. This crate does not proxy
//! anything and holds no state between runs: the kernel's rule set (and, for UDP, the pinned
//! BPF objects) is the state.
#![forbid(unsafe_code)]

pub mod apply;
pub mod iptables;
pub mod nftables;
pub mod plan;
pub mod udp;

pub use plan::{Backend, Plan, PlanError};

#[cfg(test)]
mod golden;
