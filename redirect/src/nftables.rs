//! The nftables rule set: one `inet ringmesh` table (IPv4 and IPv6 together), written in the
//! exact form `nft list table inet ringmesh` prints (sorted sets, single elements without
//! braces, marks as 8 hex digits, priority names), so verify compares line for line.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::plan::Plan;

pub const TABLE: &str = "inet ringmesh";

fn set<T: std::fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        _ => format!(
            "{{ {} }}",
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A network as nft lists it: a host route is a plain address.
fn net(c: &IpNet) -> String {
    if c.prefix_len() == c.max_prefix_len() {
        c.addr().to_string()
    } else {
        c.to_string()
    }
}

/// The table as `nft list` prints it.
pub fn ruleset(plan: &Plan) -> String {
    let mut s = format!("table {TABLE} {{\n");
    let mut chains = Vec::new();
    if plan.outbound {
        let mut c = String::from(
            "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n",
        );
        if !plan.ipv6 {
            c.push_str("\t\tmeta nfproto ipv6 return\n");
        }
        c.push_str("\t\tip daddr 127.0.0.0/8 return\n");
        if plan.ipv6 {
            c.push_str("\t\tip6 daddr ::1 return\n");
        }
        if let Some(uid) = plan.proxy_uid {
            let _ = writeln!(c, "\t\tmeta skuid {uid} return");
        }
        if let Some(mark) = plan.proxy_mark {
            let _ = writeln!(c, "\t\tmeta mark {mark:#010x} return");
        }
        if !plan.exclude_outbound_ports.is_empty() {
            let _ = writeln!(
                c,
                "\t\ttcp dport {} return",
                set(&plan.exclude_outbound_ports)
            );
        }
        let v4: Vec<_> = plan.cidrs(false).map(net).collect();
        if !v4.is_empty() {
            let _ = writeln!(c, "\t\tip daddr {} return", set(&v4));
        }
        let v6: Vec<_> = plan.cidrs(true).map(net).collect();
        if !v6.is_empty() {
            let _ = writeln!(c, "\t\tip6 daddr {} return", set(&v6));
        }
        let _ = writeln!(
            c,
            "\t\tmeta l4proto tcp redirect to :{}\n\t}}",
            plan.outbound_port
        );
        chains.push(c);
    }
    if plan.inbound {
        let mut c = String::from(
            "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n",
        );
        if !plan.ipv6 {
            c.push_str("\t\tmeta nfproto ipv6 return\n");
        }
        if !plan.exclude_inbound_ports.is_empty() {
            let _ = writeln!(
                c,
                "\t\ttcp dport {} return",
                set(&plan.exclude_inbound_ports)
            );
        }
        let _ = writeln!(
            c,
            "\t\tmeta l4proto tcp redirect to :{}\n\t}}",
            plan.inbound_port
        );
        chains.push(c);
    }
    s.push_str(&chains.join("\n"));
    s.push_str("}\n");
    s
}

/// Replaces the table atomically (`nft -f` runs a file as one transaction): the empty
/// declaration makes the delete safe when the table is absent.
pub fn install_script(plan: &Plan) -> String {
    format!(
        "table {TABLE} {{}}\ndelete table {TABLE}\n{}",
        ruleset(plan)
    )
}

/// Removes the table, present or not.
pub fn uninstall_script() -> String {
    format!("table {TABLE} {{}}\ndelete table {TABLE}\n")
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// Differences between the plan's table and `listing` (`nft list table inet ringmesh`).
pub fn diff(plan: &Plan, listing: &str) -> Vec<String> {
    let want = ruleset(plan);
    let (w, h) = (lines(&want), lines(listing));
    if w == h {
        return Vec::new();
    }
    let mut out: Vec<String> = w
        .iter()
        .filter(|l| !h.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        h.iter()
            .filter(|l| !w.contains(l))
            .map(|l| format!("+ {l}")),
    );
    if out.is_empty() {
        out.push("~ rules in another order".into());
    }
    out
}

#[cfg(test)]
mod tests;
