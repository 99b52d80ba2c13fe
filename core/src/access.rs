//! Access control by peer identity, an SMI TrafficTarget equivalent: for a destination (a
//! service, a port, or both), which source SPIFFE IDs may connect. Identities are compared as
//! parsed values.
//!
//! A connection is allowed if some rule matches its destination and lists its source, or if
//! no rule matches its destination and the default is `allow`. A rule that matches the
//! destination but not the source does not fall through to the default: once a destination
//! has rules, they are its whole list. A plaintext peer (no identity) matches no source.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::http::{HttpPolicy, RequestView, RouteName, RouteRef};
use crate::spiffe::SpiffeId;

/// What happens to a connection no rule speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAccess {
    #[default]
    Allow,
    Deny,
}

/// One rule: a destination and the sources allowed to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The destination service's name; any service when `None`.
    pub service: Option<String>,
    /// The destination port; any port when `None`.
    pub port: Option<u16>,
    pub sources: BTreeSet<SpiffeId>,
    /// The HTTP routes the sources may use (an SMI `HTTPRouteGroup` rule); empty: all
    /// traffic, HTTP or not (an SMI `TCPRoute`). A rule with routes allows no opaque
    /// connection.
    pub routes: Vec<RouteRef>,
}

impl Rule {
    fn matches(&self, dest: &Destination<'_>) -> bool {
        let service_ok = match (&self.service, dest.service) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
        };
        service_ok && self.port.is_none_or(|p| p == dest.port)
    }
}

/// Where a connection is going, as the access check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination<'a> {
    /// The mesh service this endpoint belongs to, when the config knows it.
    pub service: Option<&'a str>,
    pub port: u16,
}

/// The decision, with the reason for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A rule for the destination lists the source.
    AllowedByRule,
    /// No rule speaks of the destination; the default allows.
    AllowedByDefault,
    /// Rules exist for the destination and none lists the source (or the peer has no
    /// identity).
    DeniedByRules,
    /// No rule speaks of the destination; the default denies.
    DeniedByDefault,
}

impl Decision {
    pub fn allowed(self) -> bool {
        matches!(self, Decision::AllowedByRule | Decision::AllowedByDefault)
    }
}

/// The validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    pub default: DefaultAccess,
    pub rules: Vec<Rule>,
}

impl AccessPolicy {
    /// A connection copied as bytes: only a rule without routes allows it.
    pub fn decide(&self, dest: Destination<'_>, source: Option<&SpiffeId>) -> Decision {
        let mut matched = false;
        for rule in self.rules.iter().filter(|r| r.matches(&dest)) {
            matched = true;
            if rule.routes.is_empty() && source.is_some_and(|s| rule.sources.contains(s)) {
                return Decision::AllowedByRule;
            }
        }
        self.fallback(matched)
    }

    /// One HTTP request: allowed by the first rule for its destination that lists its source
    /// and either has no routes or has one the request is on (which is returned, for metrics
    /// and logs). Rules are tried in order, so the most specific should come first.
    pub fn decide_request<'p>(
        &self,
        http: &'p HttpPolicy,
        dest: Destination<'_>,
        source: Option<&SpiffeId>,
        req: &RequestView<'_>,
    ) -> (Decision, Option<RouteName<'p>>) {
        let mut matched = false;
        for rule in self.rules.iter().filter(|r| r.matches(&dest)) {
            matched = true;
            if !source.is_some_and(|s| rule.sources.contains(s)) {
                continue;
            }
            if rule.routes.is_empty() {
                return (Decision::AllowedByRule, None);
            }
            if let Some(name) = rule.routes.iter().find_map(|r| http.route_matches(*r, req)) {
                return (Decision::AllowedByRule, Some(name));
            }
        }
        (self.fallback(matched), None)
    }

    fn fallback(&self, matched: bool) -> Decision {
        match (matched, self.default) {
            (true, _) => Decision::DeniedByRules,
            (false, DefaultAccess::Allow) => Decision::AllowedByDefault,
            (false, DefaultAccess::Deny) => Decision::DeniedByDefault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn policy(default: DefaultAccess) -> AccessPolicy {
        AccessPolicy {
            default,
            rules: vec![
                Rule {
                    service: Some("web".into()),
                    port: Some(8080),
                    sources: [id("spiffe://td/ns/a/sa/frontend")].into(),
                    routes: Vec::new(),
                },
                Rule {
                    service: None,
                    port: Some(9090),
                    sources: [id("spiffe://td/ns/mon/sa/prometheus")].into(),
                    routes: Vec::new(),
                },
            ],
        }
    }

    const WEB: Destination<'static> = Destination {
        service: Some("web"),
        port: 8080,
    };

    #[test]
    fn listed_sources_pass_others_do_not() {
        let p = policy(DefaultAccess::Allow);
        assert_eq!(
            p.decide(WEB, Some(&id("spiffe://td/ns/a/sa/frontend"))),
            Decision::AllowedByRule
        );
        assert_eq!(
            p.decide(WEB, Some(&id("spiffe://td/ns/a/sa/backend"))),
            Decision::DeniedByRules
        );
        // No prefix matching, either way round.
        assert_eq!(
            p.decide(WEB, Some(&id("spiffe://td/ns/a/sa/frontend2"))),
            Decision::DeniedByRules
        );
        assert_eq!(
            p.decide(WEB, Some(&id("spiffe://td/ns/a/sa"))),
            Decision::DeniedByRules
        );
        assert_eq!(
            p.decide(WEB, Some(&id("spiffe://td2/ns/a/sa/frontend"))),
            Decision::DeniedByRules
        );
        assert_eq!(
            p.decide(WEB, None),
            Decision::DeniedByRules,
            "plaintext has no identity"
        );
    }

    #[test]
    fn port_only_rules_cover_every_service() {
        let p = policy(DefaultAccess::Allow);
        let metrics = Destination {
            service: None,
            port: 9090,
        };
        assert!(
            p.decide(metrics, Some(&id("spiffe://td/ns/mon/sa/prometheus")))
                .allowed()
        );
        assert!(
            !p.decide(metrics, Some(&id("spiffe://td/ns/a/sa/frontend")))
                .allowed()
        );
        let web_metrics = Destination {
            service: Some("web"),
            port: 9090,
        };
        assert!(
            p.decide(web_metrics, Some(&id("spiffe://td/ns/mon/sa/prometheus")))
                .allowed()
        );
    }

    #[test]
    fn default_decides_what_no_rule_covers() {
        let other = Destination {
            service: Some("db"),
            port: 5432,
        };
        let anyone = id("spiffe://td/ns/x/sa/y");
        assert_eq!(
            policy(DefaultAccess::Allow).decide(other, Some(&anyone)),
            Decision::AllowedByDefault
        );
        assert_eq!(
            policy(DefaultAccess::Deny).decide(other, Some(&anyone)),
            Decision::DeniedByDefault
        );
        assert_eq!(
            policy(DefaultAccess::Allow).decide(other, None),
            Decision::AllowedByDefault
        );
        // A service-bound rule does not match a destination the config cannot name.
        let unnamed = Destination {
            service: None,
            port: 8080,
        };
        assert_eq!(
            policy(DefaultAccess::Deny).decide(unnamed, Some(&anyone)),
            Decision::DeniedByDefault
        );
    }
}
