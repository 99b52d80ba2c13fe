use super::*;
use serde_json::json;

fn put(ks: &mut KeySpace, key: &str, rev: u64, v: &Value) {
    ks.put(key.into(), rev, serde_json::to_vec(v).unwrap().into());
}

fn manifest(ks: &mut KeySpace, scope: &Scope, rev: u64, version: u64, parts: &[(&str, u64)]) {
    let m = Manifest {
        version,
        parts: parts
            .iter()
            .map(|(k, r)| {
                let sha256 = ks.get(k).map(|(_, v)| digest(v)).unwrap_or_default();
                (
                    k.to_string(),
                    Part {
                        revision: *r,
                        sha256,
                    },
                )
            })
            .collect(),
        published_at: 0,
    };
    put(
        ks,
        &scope.manifest_key(),
        rev,
        &serde_json::to_value(m).unwrap(),
    );
}

#[test]
fn names_escape_to_one_token() {
    assert_eq!(escape("default/web-0"), "default/web-0");
    assert_eq!(escape("a.b=c d"), "a=2eb=3dc=20d");
    for n in ["a.b=c d", "ünï", "x"] {
        assert_eq!(unescape(&escape(n)).as_deref(), Some(n));
    }
    let s = Scope::Node("ip-10-0-0-1.ec2.internal".into());
    assert_eq!(s.prefix(), "node.ip-10-0-0-1=2eec2=2einternal");
    assert_eq!(
        s.service_of(&s.service_key("web.prod")).as_deref(),
        Some("web.prod")
    );
    assert_eq!(
        Scope::parse("workload/default/web-0").unwrap(),
        Scope::Workload("default/web-0".into())
    );
    assert!(Scope::parse("cluster").is_err());
    assert!(Scope::parse("node/").is_err());
}

#[test]
fn a_version_is_applied_only_when_every_part_is_there() {
    let mesh = Scope::Mesh;
    let mut ks = KeySpace::default();
    assert_eq!(assemble(&ks, std::slice::from_ref(&mesh)), Ok(None));
    put(&mut ks, "mesh.base", 1, &json!({"egress": "deny"}));
    put(
        &mut ks,
        "mesh.svc.web",
        2,
        &json!({"name": "web", "addrs": ["10.96.0.1:80"], "endpoints": [{"addr": "10.0.0.1:80"}]}),
    );
    let db = json!({"name": "db", "addrs": ["10.96.0.2:5432"], "endpoints": [{"addr": "10.0.0.2:5432"}]});
    put(&mut ks, "mesh.svc.db", 3, &db);
    manifest(
        &mut ks,
        &mesh,
        4,
        1,
        &[("mesh.base", 1), ("mesh.svc.web", 2), ("mesh.svc.db", 3)],
    );
    // The manifest names a part that has not arrived.
    ks.remove("mesh.svc.db");
    assert!(matches!(
        assemble(&ks, std::slice::from_ref(&mesh)),
        Err(AssembleError::Incomplete { .. })
    ));
    put(&mut ks, "mesh.svc.db", 3, &db);
    let l = assemble(&ks, std::slice::from_ref(&mesh)).unwrap().unwrap();
    assert_eq!(
        l.versions,
        Versions {
            mesh: 1,
            node: None,
            workload: None
        }
    );
    assert_eq!(l.document["egress"], "deny");
    assert_eq!(l.document["services"].as_array().unwrap().len(), 2);
    // A later push overwrote a part before its manifest came: wait, do not mix versions.
    put(
        &mut ks,
        "mesh.svc.web",
        5,
        &json!({"name": "web", "addrs": ["10.96.0.1:80"], "endpoints": [{"addr": "10.0.0.9:80"}]}),
    );
    assert!(matches!(
        assemble(&ks, std::slice::from_ref(&mesh)),
        Err(AssembleError::Incomplete { .. })
    ));
    manifest(
        &mut ks,
        &mesh,
        6,
        2,
        &[("mesh.base", 1), ("mesh.svc.web", 5), ("mesh.svc.db", 3)],
    );
    // And a part that does not match its digest is refused.
    let mut tampered = ks.clone();
    put(
        &mut tampered,
        "mesh.svc.db",
        3,
        &json!({"name": "db", "addrs": ["10.96.0.2:5432"], "endpoints": [{"addr": "6.6.6.6:5432"}]}),
    );
    assert!(matches!(
        assemble(&tampered, std::slice::from_ref(&mesh)),
        Err(AssembleError::Invalid { .. })
    ));
    let l = assemble(&ks, &[mesh]).unwrap().unwrap();
    assert_eq!(l.versions.mesh, 2);
    assert_eq!(
        l.document["services"][1]["endpoints"][0]["addr"],
        "10.0.0.9:80"
    );
}

#[test]
fn overrides_layer_by_field_and_by_service() {
    let (mesh, node, wl) = (
        Scope::Mesh,
        Scope::Node("n1".into()),
        Scope::Workload("default/web-0".into()),
    );
    let mut ks = KeySpace::default();
    put(
        &mut ks,
        "mesh.base",
        1,
        &json!({"egress": "deny", "copy": "splice"}),
    );
    put(
        &mut ks,
        "mesh.svc.a",
        2,
        &json!({"name": "a", "addrs": ["10.96.0.1:80"], "endpoints": [{"addr": "10.0.0.1:80"}]}),
    );
    put(
        &mut ks,
        "mesh.svc.b",
        3,
        &json!({"name": "b", "addrs": ["10.96.0.2:80"], "endpoints": [{"addr": "10.0.0.2:80"}]}),
    );
    manifest(
        &mut ks,
        &mesh,
        4,
        7,
        &[("mesh.base", 1), ("mesh.svc.a", 2), ("mesh.svc.b", 3)],
    );
    put(&mut ks, &node.base_key(), 5, &json!({"egress": "allow"}));
    manifest(&mut ks, &node, 6, 2, &[(&node.base_key(), 5)]);
    let b = wl.service_key("b");
    put(
        &mut ks,
        &b,
        7,
        &json!({"name": "b", "addrs": ["10.96.0.2:80"], "endpoints": [{"addr": "10.9.9.9:80"}]}),
    );
    manifest(&mut ks, &wl, 8, 3, &[(&b, 7)]);
    let l = assemble(&ks, &[mesh, node, wl]).unwrap().unwrap();
    assert_eq!(
        l.versions,
        Versions {
            mesh: 7,
            node: Some(2),
            workload: Some(3)
        }
    );
    assert_eq!(l.document["egress"], "allow", "the node's field wins");
    assert_eq!(l.document["copy"], "splice", "fields it does not name stay");
    let svcs = l.document["services"].as_array().unwrap();
    assert_eq!(svcs.len(), 2);
    assert_eq!(
        svcs[1]["endpoints"][0]["addr"], "10.9.9.9:80",
        "the workload's service wins"
    );
    assert_eq!(l.versions.to_string(), "7 (node 2, workload 3)");
}

#[test]
fn bad_parts_are_reported_not_applied() {
    let mesh = Scope::Mesh;
    let mut ks = KeySpace::default();
    ks.put(
        "mesh.svc.a".into(),
        1,
        bytes::Bytes::from_static(b"{\"name\": \"a\", \"addrs\""),
    );
    put(
        &mut ks,
        "mesh.svc.b",
        2,
        &json!({"name": "c", "addrs": [], "endpoints": []}),
    );
    put(
        &mut ks,
        "mesh.base",
        3,
        &json!({"admin": "0.0.0.0:1", "services": []}),
    );
    ks.put("mesh.svc.big".into(), 4, vec![b' '; MAX_PART + 1].into());
    manifest(
        &mut ks,
        &mesh,
        5,
        9,
        &[
            ("mesh.svc.a", 1),
            ("mesh.svc.b", 2),
            ("mesh.base", 3),
            ("mesh.svc.big", 4),
            ("node.x.base", 1),
        ],
    );
    let Err(AssembleError::Invalid { versions, errors }) = assemble(&ks, &[mesh]) else {
        panic!()
    };
    assert_eq!(versions.mesh, 9);
    let all = errors.join("\n");
    for want in [
        "mesh.svc.a: not valid JSON",
        "mesh.svc.b: the service is named \"c\"",
        "mesh.base: \"admin\" takes a restart",
        "mesh.base: services are parts of their own",
        "mesh.svc.big: ",
        "names \"node.x.base\", which is not a part of mesh",
    ] {
        assert!(all.contains(want), "missing {want:?} in\n{all}");
    }
    let mut ks = KeySpace::default();
    ks.put(
        "mesh.manifest".into(),
        1,
        bytes::Bytes::from_static(b"{\"version\": \"x\"}"),
    );
    assert!(matches!(
        assemble(&ks, &[Scope::Mesh]),
        Err(AssembleError::Invalid { .. })
    ));
}

#[test]
fn versions_only_move_forward() {
    let v = |mesh, node| Versions {
        mesh,
        node,
        workload: None,
    };
    assert!(v(2, None).newer_than(v(1, None)));
    assert!(!v(1, None).newer_than(v(1, None)));
    assert!(v(1, Some(1)).newer_than(v(1, None)));
    assert!(
        !v(2, Some(1)).newer_than(v(1, Some(2))),
        "the node went back"
    );
    assert!(v(2, Some(1)).older_than(v(1, Some(2))));
    assert!(v(1, None).older_than(v(2, None)));
    assert!(!v(2, None).older_than(v(2, None)));
}
