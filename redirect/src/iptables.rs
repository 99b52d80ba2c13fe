//! The iptables rule set, in exactly the form `iptables-save` prints it, so that verify can
//! compare line for line. Two chains in the `nat` table, `RINGMESH_OUTPUT` and
//! `RINGMESH_PREROUTING`, each entered by one jump from the built-in chain.

use std::collections::BTreeMap;

use crate::plan::Plan;

pub const OUTPUT_CHAIN: &str = "RINGMESH_OUTPUT";
pub const PREROUTING_CHAIN: &str = "RINGMESH_PREROUTING";
const OUR_CHAINS: [&str; 2] = [OUTPUT_CHAIN, PREROUTING_CHAIN];
/// `-m multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

/// Our rules of one family as `-A` lines, by chain: our two chains and the built-in chains'
/// jumps into them.
pub fn rules(plan: &Plan, v6: bool) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |chain: &str, rule: String| {
        out.entry(chain.to_string())
            .or_default()
            .push(format!("-A {chain} {rule}"));
    };
    if plan.outbound {
        add("OUTPUT", format!("-p tcp -j {OUTPUT_CHAIN}"));
        add(
            OUTPUT_CHAIN,
            format!(
                "-d {} -j RETURN",
                if v6 { "::1/128" } else { "127.0.0.0/8" }
            ),
        );
        if let Some(uid) = plan.proxy_uid {
            add(
                OUTPUT_CHAIN,
                format!("-m owner --uid-owner {uid} -j RETURN"),
            );
        }
        if let Some(mark) = plan.proxy_mark {
            add(OUTPUT_CHAIN, format!("-m mark --mark {mark:#x} -j RETURN"));
        }
        for chunk in plan.exclude_outbound_ports.chunks(MULTIPORT_MAX) {
            add(
                OUTPUT_CHAIN,
                format!("-p tcp -m multiport --dports {} -j RETURN", ports(chunk)),
            );
        }
        for cidr in plan.cidrs(v6) {
            add(OUTPUT_CHAIN, format!("-d {cidr} -j RETURN"));
        }
        add(
            OUTPUT_CHAIN,
            format!("-p tcp -j REDIRECT --to-ports {}", plan.outbound_port),
        );
    }
    if plan.inbound {
        add("PREROUTING", format!("-p tcp -j {PREROUTING_CHAIN}"));
        for chunk in plan.exclude_inbound_ports.chunks(MULTIPORT_MAX) {
            add(
                PREROUTING_CHAIN,
                format!("-p tcp -m multiport --dports {} -j RETURN", ports(chunk)),
            );
        }
        add(
            PREROUTING_CHAIN,
            format!("-p tcp -j REDIRECT --to-ports {}", plan.inbound_port),
        );
    }
    out
}

fn ports(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// Our lines in an `iptables-save -t nat` dump: every rule of our chains, and every jump
/// into them from anywhere, by chain, in the order listed.
pub fn ours(save: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in save.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split_whitespace().next().unwrap_or_default();
        let jumps_to_ours = OUR_CHAINS
            .iter()
            .any(|c| rest.ends_with(&format!("-j {c}")));
        if OUR_CHAINS.contains(&chain) || jumps_to_ours {
            out.entry(chain.to_string())
                .or_default()
                .push(line.to_string());
        }
    }
    out
}

/// Our chains declared in a dump.
fn declared(save: &str) -> Vec<&'static str> {
    OUR_CHAINS
        .into_iter()
        .filter(|c| save.lines().any(|l| l.starts_with(&format!(":{c} "))))
        .collect()
}

/// Removes our jumps (as found in `save`, so nothing else is touched).
fn delete_jumps(save: &str, script: &mut String) {
    for (chain, lines) in ours(save) {
        if OUR_CHAINS.contains(&chain.as_str()) {
            continue;
        }
        for l in lines {
            script.push_str(&format!("-D {}\n", &l[3..]));
        }
    }
}

/// An `iptables-restore --noflush` script that installs the plan atomically over whatever
/// `save` shows: declaring our chains flushes them, old jumps are deleted, new ones added.
/// Running it twice leaves one copy.
pub fn install_script(plan: &Plan, v6: bool, save: &str) -> String {
    let wanted = rules(plan, v6);
    let mut s = String::from("*nat\n");
    for c in OUR_CHAINS {
        if wanted.contains_key(c) || declared(save).contains(&c) {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
    }
    delete_jumps(save, &mut s);
    for c in OUR_CHAINS {
        if !wanted.contains_key(c) && declared(save).contains(&c) {
            s.push_str(&format!("-X {c}\n"));
        }
    }
    // Our chains first, then the jumps into them.
    for (chain, lines) in wanted
        .iter()
        .filter(|(c, _)| OUR_CHAINS.contains(&c.as_str()))
    {
        let _ = chain;
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
    }
    for (_, lines) in wanted
        .iter()
        .filter(|(c, _)| !OUR_CHAINS.contains(&c.as_str()))
    {
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// A script that removes exactly what install added, or `None` when nothing is there.
pub fn uninstall_script(save: &str) -> Option<String> {
    let chains = declared(save);
    let mut s = String::from("*nat\n");
    delete_jumps(save, &mut s);
    for c in &chains {
        s.push_str(&format!("-F {c}\n-X {c}\n"));
    }
    if s == "*nat\n" {
        return None;
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Differences between what the plan wants and what `save` holds, one line each
/// (`- missing`, `+ unexpected`); empty when they agree.
pub fn diff(plan: &Plan, v6: bool, save: &str) -> Vec<String> {
    let want = rules(plan, v6);
    let have = ours(save);
    let mut out = Vec::new();
    let chains: std::collections::BTreeSet<&String> = want.keys().chain(have.keys()).collect();
    for chain in chains {
        let w = want.get(chain).map(Vec::as_slice).unwrap_or_default();
        let h = have.get(chain).map(Vec::as_slice).unwrap_or_default();
        if w != h {
            out.extend(
                w.iter()
                    .filter(|l| !h.contains(l))
                    .map(|l| format!("- {l}")),
            );
            out.extend(
                h.iter()
                    .filter(|l| !w.contains(l))
                    .map(|l| format!("+ {l}")),
            );
            if out.is_empty() {
                out.push(format!("~ chain {chain}: rules in another order"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
