//! Golden-text comparison for the rule generators: `UPDATE_GOLDEN=1 cargo test` rewrites the
//! files, and the diff is then reviewed like code.

use std::path::PathBuf;

pub(crate) fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(actual, want, "{name} differs from its golden file");
}

pub(crate) fn plans() -> Vec<(&'static str, crate::Plan)> {
    use crate::Plan;
    vec![
        ("default", Plan::default().validate().unwrap()),
        (
            "full",
            Plan {
                proxy_uid: Some(1337),
                proxy_mark: Some(0x539),
                exclude_inbound_ports: vec![22, 15020],
                exclude_outbound_ports: vec![53, 8126],
                exclude_outbound_cidrs: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "169.254.169.254/32".parse().unwrap(),
                    "fd00::/8".parse().unwrap(),
                ],
                ..Plan::default()
            }
            .validate()
            .unwrap(),
        ),
        (
            "v4-uid-one-port",
            Plan {
                proxy_uid: Some(1500),
                proxy_mark: None,
                exclude_outbound_ports: vec![22],
                exclude_inbound_ports: vec![9090],
                exclude_outbound_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
                ipv6: false,
                ..Plan::default()
            }
            .validate()
            .unwrap(),
        ),
        (
            "inbound-only",
            Plan {
                outbound: false,
                proxy_mark: None,
                ..Plan::default()
            }
            .validate()
            .unwrap(),
        ),
    ]
}
