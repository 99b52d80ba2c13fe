//! `meshctl inject`: golden outputs for every kind (packaging/k8s/inject/examples →
//! packaging/k8s/inject/golden, which CI also validates with kubernetes-validate), injecting
//! twice changes nothing, uninjecting gives the input back, and bad input is refused whole.
//!
//! `UPDATE_GOLDEN=1 cargo test -p ringmesh-ctrl --test inject` rewrites the goldens; review
//! the diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ringmesh_ctrl::inject::{self, Options};
use serde_yaml::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/k8s/inject")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir().join("examples"))
        .expect("examples dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    assert!(v.len() >= 10, "examples missing: {v:?}");
    v
}

/// Every document, parsed (YAML parses JSON too), for comparisons that ignore formatting.
fn docs(s: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(s)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("parses"))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn golden_outputs_for_every_kind() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut kinds = std::collections::BTreeSet::new();
    for path in examples() {
        let input = std::fs::read_to_string(&path).expect("read");
        let (out, report) = inject::inject(&input, &Options::default()).expect("injects");
        let golden = dir().join("golden").join(path.file_name().expect("name"));
        if update {
            std::fs::create_dir_all(golden.parent().expect("parent")).expect("mkdir");
            std::fs::write(&golden, &out).expect("write golden");
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", golden.display()));
        assert_eq!(out, want, "{} differs from its golden", path.display());
        assert!(!report.lines.is_empty(), "{}: no report", path.display());
        for d in docs(&input) {
            collect_kinds(&d, &mut kinds);
        }
        // JSON in, JSON out.
        assert_eq!(
            out.trim_start().starts_with('{'),
            input.trim_start().starts_with('{'),
            "{}",
            path.display()
        );
    }
    for k in [
        "Pod",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "ReplicationController",
        "Job",
        "CronJob",
        "List",
    ] {
        assert!(kinds.contains(k), "no example of {k}");
    }
}

fn collect_kinds(v: &Value, kinds: &mut std::collections::BTreeSet<String>) {
    if let Some(k) = v.get("kind").and_then(Value::as_str) {
        kinds.insert(k.to_string());
    }
    if let Some(items) = v.get("items").and_then(Value::as_sequence) {
        for i in items {
            collect_kinds(i, kinds);
        }
    }
}

#[test]
fn injecting_twice_changes_nothing_and_uninject_restores_the_input() {
    for path in examples() {
        let input = std::fs::read_to_string(&path).expect("read");
        let (once, _) = inject::inject(&input, &Options::default()).expect("injects");
        let (twice, report) = inject::inject(&once, &Options::default()).expect("again");
        assert_eq!(
            once,
            twice,
            "{}: second injection changed it",
            path.display()
        );
        assert!(
            report
                .lines
                .iter()
                .all(|l| l.contains("unchanged") || l.contains("gRPC")),
            "{report:?}"
        );
        let (back, _) = inject::uninject(&once).expect("uninjects");
        assert_eq!(docs(&back), docs(&input), "{}: round trip", path.display());
        // Uninjecting what was never injected is a no-op too.
        let (same, _) = inject::uninject(&back).expect("uninject again");
        assert_eq!(docs(&same), docs(&input));
    }
}

fn pod_template<'a>(doc: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = doc;
    for k in path {
        v = v.get(*k).unwrap_or_else(|| panic!("no {k}"));
    }
    v
}

fn init_args(spec: &Value) -> Vec<String> {
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "ringmesh-init");
    init["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].as_str())
}

#[test]
fn what_injection_adds() {
    let input = std::fs::read_to_string(dir().join("examples/deployment.yaml")).expect("read");
    let (out, report) = inject::inject(&input, &Options::default()).expect("injects");
    let doc = &docs(&out)[0];
    let tpl = pod_template(doc, &["spec", "template"]);
    let spec = &tpl["spec"];
    // Our init first, the sidecar second (native sidecar), the app's own init after them.
    let names: Vec<&str> = spec["initContainers"]
        .as_sequence()
        .expect("inits")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["ringmesh-init", "ringmesh-proxy", "migrate"]);
    let args = init_args(spec);
    // The annotations became flags; the health port is always excluded.
    assert_eq!(
        arg_after(&args, "--exclude-inbound-ports"),
        Some("9100,9101,15020")
    );
    assert_eq!(arg_after(&args, "--exclude-outbound-ports"), Some("5432"));
    assert_eq!(
        arg_after(&args, "--exclude-outbound-cidrs"),
        Some("169.254.169.254/32")
    );
    assert_eq!(arg_after(&args, "--proxy-uid"), Some("1337"));
    assert!(args.iter().any(|a| a == "--no-mark"));
    assert!(!args.iter().any(|a| a == "--udp"));
    let init_caps = &spec["initContainers"][0]["securityContext"]["capabilities"];
    assert_eq!(init_caps["add"], Value::from(vec!["NET_ADMIN", "NET_RAW"]));
    assert_eq!(init_caps["drop"], Value::from(vec!["ALL"]));

    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 1337);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], Value::from(vec!["ALL"]));
    assert!(sc["capabilities"].get("add").is_none());
    assert_eq!(sc["seccompProfile"]["type"], "Localhost");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert!(proxy["resources"]["requests"].get("cpu").is_some());
    let env: Vec<&str> = proxy["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    for e in [
        "POD_NAME",
        "POD_NAMESPACE",
        "NODE_NAME",
        "RINGMESH_HEALTH",
        "RINGMESH_APP_PROBES",
    ] {
        assert!(env.contains(&e), "{e} missing from {env:?}");
    }
    let probes_json = proxy["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "RINGMESH_APP_PROBES")
        .and_then(|e| e["value"].as_str())
        .expect("probes");
    let probes: serde_json::Value = serde_json::from_str(probes_json).expect("json");
    assert_eq!(
        probes["/app-health/api/startup"]["httpGet"]["scheme"], "HTTPS",
        "{probes}"
    );
    assert_eq!(probes["/app-health/api/startup"]["httpGet"]["port"], 9000);

    // The app's HTTPS startup probe now asks the sidecar; the gRPC one is untouched.
    let api = &spec["containers"][0];
    assert_eq!(
        api["startupProbe"]["httpGet"]["path"],
        "/app-health/api/startup"
    );
    assert_eq!(api["startupProbe"]["httpGet"]["port"], 15020);
    assert_eq!(api["startupProbe"]["failureThreshold"], 30);
    assert!(api["livenessProbe"].get("grpc").is_some());
    assert!(
        report.lines.iter().any(|l| l.contains("gRPC")),
        "{report:?}"
    );
    // The exec probe is untouched.
    assert!(
        spec["containers"][1]["readinessProbe"]
            .get("exec")
            .is_some()
    );
    let vols: Vec<&str> = spec["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        vols,
        ["tmp", "ringmesh-spire", "ringmesh-config", "ringmesh-state"]
    );
    assert!(
        tpl["metadata"]["annotations"]
            .get(inject::STATUS_ANNOTATION)
            .is_some()
    );
}

#[test]
fn named_ports_resolve_and_tcp_probes_are_rewritten() {
    let input = std::fs::read_to_string(dir().join("examples/pod.yaml")).expect("read");
    let (out, _) = inject::inject(&input, &Options::default()).expect("injects");
    let doc = &docs(&out)[0];
    let proxy = &doc["spec"]["initContainers"][1];
    let probes_json = proxy["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "RINGMESH_APP_PROBES")
        .and_then(|e| e["value"].as_str())
        .expect("probes");
    let probes: serde_json::Value = serde_json::from_str(probes_json).expect("json");
    assert_eq!(probes["/app-health/web/readiness"]["httpGet"]["port"], 8080);
    assert_eq!(
        probes["/app-health/web/readiness"]["httpGet"]["httpHeaders"][0]["name"],
        "X-Probe"
    );
    assert_eq!(
        probes["/app-health/web/liveness"]["tcpSocket"]["port"],
        8080
    );
    assert_eq!(probes["/app-health/web/liveness"]["timeoutSeconds"], 2);
    let web = &doc["spec"]["containers"][0];
    assert_eq!(
        web["livenessProbe"]["httpGet"]["path"],
        "/app-health/web/liveness"
    );
    assert!(web["livenessProbe"].get("tcpSocket").is_none());
    assert_eq!(web["livenessProbe"]["timeoutSeconds"], 2);
}

#[test]
fn udp_adds_the_flag_bpf_and_the_bpf_filesystem() {
    let input = std::fs::read_to_string(dir().join("examples/daemonset.yaml")).expect("read");
    let (out, _) = inject::inject(&input, &Options::default()).expect("injects");
    let doc = &docs(&out)[0];
    let spec = &pod_template(doc, &["spec", "template"])["spec"];
    assert!(init_args(spec).iter().any(|a| a == "--udp"));
    let add = &spec["initContainers"][0]["securityContext"]["capabilities"]["add"];
    assert_eq!(*add, Value::from(vec!["NET_ADMIN", "NET_RAW", "BPF"]));
    assert!(
        spec["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == "ringmesh-bpf")
    );
    // The command line's --udp reaches pods without the annotation; the annotation says no.
    let opts = Options {
        udp: true,
        ..Options::default()
    };
    let input = std::fs::read_to_string(dir().join("examples/job.yaml")).expect("read");
    let (out, _) = inject::inject(&input, &opts).expect("injects");
    assert!(
        init_args(&docs(&out)[0]["spec"]["template"]["spec"])
            .iter()
            .any(|a| a == "--udp")
    );
    let no = input.replace("    spec:\n      restartPolicy", "    metadata:\n      annotations:\n        ringmesh.io/intercept-udp: \"false\"\n    spec:\n      restartPolicy");
    let (out, _) = inject::inject(&no, &opts).expect("injects");
    assert!(
        !init_args(&docs(&out)[0]["spec"]["template"]["spec"])
            .iter()
            .any(|a| a == "--udp")
    );
}

#[test]
fn opted_out_and_other_kinds_pass_through() {
    let input = std::fs::read_to_string(dir().join("examples/multi.yaml")).expect("read");
    let (out, report) = inject::inject(&input, &Options::default()).expect("injects");
    let (before, after) = (docs(&input), docs(&out));
    assert_eq!(before.len(), 4);
    assert_eq!(after.len(), 4);
    assert_eq!(before[0], after[0], "Service changed");
    assert_ne!(before[1], after[1], "Deployment not injected");
    assert_eq!(before[2], after[2], "opted-out Pod changed");
    assert_eq!(before[3], after[3], "ConfigMap changed");
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("Pod/debug: injection disabled")),
        "{report:?}"
    );
}

#[test]
fn bad_input_is_refused_whole() {
    let pod = std::fs::read_to_string(dir().join("examples/pod.yaml")).expect("read");
    let cases = [
        ("kind: Pod\nspec: [\n", "not valid YAML"),
        (
            &pod.replace("port: http", "port: nope") as &str,
            "names no port",
        ),
        (
            &pod.replace("spec:\n  serviceAccountName", "spec:\n  hostNetwork: true\n  serviceAccountName"),
            "host's network",
        ),
        (
            &pod.replace("labels:\n    app: web", "annotations:\n    ringmesh.io/exclude-inbound-ports: \"80,x\""),
            "is not valid",
        ),
        (
            &pod.replace(
                "labels:\n    app: web",
                "annotations:\n    ringmesh.io/exclude-inbound-ports: \"80\"\n    config.nsm.nginx.com/ignore-incoming-ports: \"81\"",
            ),
            "disagree",
        ),
        (
            &pod.replace("labels:\n    app: web", "annotations:\n    ringmesh.io/intercept-udp: \"yes\""),
            "not true or false",
        ),
    ];
    for (input, why) in cases {
        let e = inject::inject(input, &Options::default())
            .expect_err(why)
            .to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
    // The command line and an annotation must agree, as with NGINX Service Mesh.
    let annotated = pod.replace(
        "labels:\n    app: web",
        "annotations:\n    config.nsm.nginx.com/ignore-incoming-ports: \"9000\"",
    );
    let opts = Options {
        exclude_inbound_ports: Some(vec![9001]),
        ..Options::default()
    };
    let e = inject::inject(&annotated, &opts)
        .expect_err("conflict")
        .to_string();
    assert!(e.contains("disagrees with --exclude-inbound-ports"), "{e}");
    let agree = Options {
        exclude_inbound_ports: Some(vec![9000]),
        ..Options::default()
    };
    inject::inject(&annotated, &agree).expect("agreeing flag and annotation");
}

/// The binary: stdin to stdout, report on stderr, a clear error and nothing on stdout for bad
/// input.
#[test]
fn meshctl_inject_command_line() {
    let bin = env!("CARGO_BIN_EXE_meshctl");
    let input = std::fs::read_to_string(dir().join("examples/replicaset.yaml")).expect("read");
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meshctl");
        use std::io::Write;
        // A command that refuses its arguments exits without reading stdin: the pipe closing
        // under the write is that refusal, which the exit status below then shows.
        match child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
        {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write: {e}"),
            _ => {}
        }
        child.wait_with_output().expect("wait")
    };
    let out = run(&["inject", "-f", "-"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = String::from_utf8(out.stdout).expect("utf8");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ReplicaSet/worker: injected"));
    assert_eq!(
        injected,
        std::fs::read_to_string(dir().join("golden/replicaset.yaml")).expect("golden")
    );
    let out = run(&["inject", "--uninject"], &injected);
    assert!(out.status.success());
    assert_eq!(
        docs(&String::from_utf8(out.stdout).expect("utf8")),
        docs(&input)
    );
    let out = run(&["inject", "--exclude-inbound-ports", "70000"], &input);
    assert!(!out.status.success());
    let out = run(&["inject"], "kind: Pod\nspec: {containers: [}\n");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid YAML"));
    let file = dir().join("examples/job.yaml");
    let out = Command::new(bin)
        .args(["inject", "-f"])
        .arg(&file)
        .args([
            "--runtime-default-seccomp",
            "--proxy-image",
            "registry.example/ringmesh/proxy:9",
        ])
        .output()
        .expect("meshctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = &docs(&String::from_utf8(out.stdout).expect("utf8"))[0];
    let proxy = &doc["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(proxy["image"], "registry.example/ringmesh/proxy:9");
    assert_eq!(
        proxy["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
}
