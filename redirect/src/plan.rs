//! What to intercept, checked once.

use std::net::IpAddr;

use ipnet::IpNet;

/// The rule engine to program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore` / `ip6tables-restore` (whichever variant, nft or legacy, is the
    /// system's `iptables`); chains `RINGMESH_OUTPUT` and `RINGMESH_PREROUTING` in `nat`.
    Iptables,
    /// `nft -f`; one `inet ringmesh` table.
    Nftables,
}

/// The interception to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where outbound TCP is redirected (the proxy's outbound listener).
    pub outbound_port: u16,
    /// Where inbound TCP is redirected (the proxy's inbound listener).
    pub inbound_port: u16,
    /// Redirect outbound traffic at all.
    pub outbound: bool,
    /// Redirect inbound traffic at all.
    pub inbound: bool,
    /// Traffic from sockets owned by this uid passes (the proxy's own upstream connections).
    pub proxy_uid: Option<u32>,
    /// Traffic from sockets with this mark passes (the proxy's `bypass_mark`).
    pub proxy_mark: Option<u32>,
    /// Inbound destination ports that reach the app directly.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports that leave directly.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks that are reached directly.
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Intercept IPv6 as well as IPv4.
    pub ipv6: bool,
}

/// Why a plan cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(
        "outbound interception needs a bypass for the proxy's own connections: give \
         --proxy-uid, --proxy-mark, or both"
    )]
    NoBypass,
    #[error("{0} must not be 0")]
    ZeroPort(&'static str),
    #[error("the outbound and inbound ports are both {0}")]
    SamePorts(u16),
    #[error("--proxy-mark must not be 0 (0 means no mark)")]
    ZeroMark,
    #[error("excluded CIDR {0} is IPv6 but IPv6 interception is off")]
    V6CidrWithoutV6(IpNet),
}

impl Default for Plan {
    /// The sidecar defaults: ports 15001 and 15006, both directions, IPv4 and IPv6, proxy
    /// bypassed by the mark 1337 that `uring-proxy`'s default config sets.
    fn default() -> Self {
        Self {
            outbound_port: 15001,
            inbound_port: 15006,
            outbound: true,
            inbound: true,
            proxy_uid: None,
            proxy_mark: Some(1337),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            ipv6: true,
        }
    }
}

impl Plan {
    /// Checks the plan and puts it in canonical form: CIDRs without host bits, sorted lists
    /// without duplicates (what the kernel will list back).
    pub fn validate(mut self) -> Result<Self, PlanError> {
        if self.outbound_port == 0 {
            return Err(PlanError::ZeroPort("--outbound-port"));
        }
        if self.inbound_port == 0 {
            return Err(PlanError::ZeroPort("--inbound-port"));
        }
        if self.outbound_port == self.inbound_port {
            return Err(PlanError::SamePorts(self.inbound_port));
        }
        if self.proxy_mark == Some(0) {
            return Err(PlanError::ZeroMark);
        }
        if self.outbound && self.proxy_uid.is_none() && self.proxy_mark.is_none() {
            return Err(PlanError::NoBypass);
        }
        for list in [
            &mut self.exclude_inbound_ports,
            &mut self.exclude_outbound_ports,
        ] {
            list.retain(|&p| p != 0);
            list.sort_unstable();
            list.dedup();
        }
        for c in &mut self.exclude_outbound_cidrs {
            *c = c.trunc();
        }
        if let Some(c) = self
            .exclude_outbound_cidrs
            .iter()
            .find(|c| c.addr().is_ipv6())
            && !self.ipv6
        {
            return Err(PlanError::V6CidrWithoutV6(*c));
        }
        // A network inside another excluded one adds nothing (and nft refuses overlaps).
        let all = self.exclude_outbound_cidrs.clone();
        self.exclude_outbound_cidrs
            .retain(|c| !all.iter().any(|o| o != c && o.contains(c)));
        self.exclude_outbound_cidrs
            .sort_by_key(|c| (c.addr(), c.prefix_len()));
        self.exclude_outbound_cidrs.dedup();
        Ok(self)
    }

    /// Excluded networks of one family.
    pub fn cidrs(&self, v6: bool) -> impl Iterator<Item = &IpNet> {
        self.exclude_outbound_cidrs
            .iter()
            .filter(move |c| matches!(c.addr(), IpAddr::V6(_)) == v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form() {
        let p = Plan {
            exclude_outbound_ports: vec![53, 22, 53, 0],
            exclude_outbound_cidrs: vec![
                "192.168.1.7/16".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
                "fd00::1/8".parse().unwrap(),
            ],
            ..Plan::default()
        }
        .validate()
        .unwrap();
        assert_eq!(p.exclude_outbound_ports, [22, 53]);
        let cidrs: Vec<String> = p
            .exclude_outbound_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]);
    }

    #[test]
    fn refusals() {
        let no_bypass = Plan {
            proxy_mark: None,
            ..Plan::default()
        };
        assert_eq!(no_bypass.validate(), Err(PlanError::NoBypass));
        let inbound_only = Plan {
            proxy_mark: None,
            outbound: false,
            ..Plan::default()
        };
        assert!(inbound_only.validate().is_ok());
        assert_eq!(
            Plan {
                inbound_port: 15001,
                ..Plan::default()
            }
            .validate(),
            Err(PlanError::SamePorts(15001))
        );
        assert_eq!(
            Plan {
                proxy_mark: Some(0),
                ..Plan::default()
            }
            .validate(),
            Err(PlanError::ZeroMark)
        );
        let v6 = Plan {
            ipv6: false,
            exclude_outbound_cidrs: vec!["fd00::/8".parse().unwrap()],
            ..Plan::default()
        };
        assert!(matches!(v6.validate(), Err(PlanError::V6CidrWithoutV6(_))));
    }
}
