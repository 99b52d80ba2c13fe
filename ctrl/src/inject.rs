//! `meshctl inject`: adds ringmesh to Kubernetes workloads, and `--uninject` takes it out.
//!
//! Input is YAML (several documents) or JSON (one object, or several in a row), as
//! `kubectl get -o yaml|json` or a repository of manifests has it; output is the same format,
//! keys in their original order. Pod templates are found in Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, ReplicationController, Job, CronJob and in `List` items; every other
//! document passes through untouched.
//!
//! What injection adds to a pod template:
//! - init container `ringmesh-init` (`mesh-redirect install`, as root with NET_ADMIN and
//!   NET_RAW only, plus BPF when UDP is intercepted), first, so that later init containers'
//!   traffic is already meshed;
//! - the sidecar `ringmesh-proxy` as a native sidecar (an init container with
//!   `restartPolicy: Always`: it starts before the app, stays up beside it, and does not keep a
//!   Job from completing), non-root, no capabilities, read-only root, seccomp profile;
//! - volumes `ringmesh-spire` (the Workload API socket), `ringmesh-config` (ConfigMap
//!   `ringmesh-sidecar`), `ringmesh-state` (emptyDir for the NATS config cache);
//! - the app's HTTP and TCP probes rewritten to the sidecar's health port, which makes them on
//!   loopback (the kubelet has no mesh identity, so strict mode would refuse them);
//! - the annotation `ringmesh.io/inject-status`, which records what was there before, so that
//!   uninjection restores exactly the original.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_yaml::{Mapping, Value};

/// The annotation that marks an injected pod template and records what injection changed.
pub const STATUS_ANNOTATION: &str = "ringmesh.io/inject-status";
/// Pod annotation: `"false"` leaves the pod alone.
pub const INJECT_ANNOTATION: &str = "ringmesh.io/inject";
/// NGINX Service Mesh's pod label with the same meaning (`disabled`).
pub const NSM_INJECT_LABEL: &str = "injector.nsm.nginx.com/auto-inject";
pub const INIT_NAME: &str = "ringmesh-init";
pub const PROXY_NAME: &str = "ringmesh-proxy";
const VOLUMES: [&str; 4] = [
    "ringmesh-spire",
    "ringmesh-config",
    "ringmesh-state",
    "ringmesh-bpf",
];
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];

/// Inbound ports that reach the app without the sidecar: ours and NGINX Service Mesh's.
const INBOUND_ANNOTATIONS: [&str; 2] = [
    "ringmesh.io/exclude-inbound-ports",
    "config.nsm.nginx.com/ignore-incoming-ports",
];
const OUTBOUND_ANNOTATIONS: [&str; 2] = [
    "ringmesh.io/exclude-outbound-ports",
    "config.nsm.nginx.com/ignore-outgoing-ports",
];
const CIDR_ANNOTATION: &str = "ringmesh.io/exclude-outbound-cidrs";
const UDP_ANNOTATION: &str = "ringmesh.io/intercept-udp";

/// How to inject.
#[derive(Debug, Clone)]
pub struct Options {
    pub proxy_image: String,
    pub init_image: String,
    /// The sidecar's uid (and gid); interception exempts its traffic by it.
    pub proxy_uid: u32,
    /// `nftables` or `iptables`.
    pub backend: String,
    /// Intercept UDP too, unless a pod's annotation says otherwise.
    pub udp: bool,
    /// Given on the command line: must agree with a pod's annotations when both are there.
    pub exclude_inbound_ports: Option<Vec<u16>>,
    pub exclude_outbound_ports: Option<Vec<u16>>,
    pub exclude_outbound_cidrs: Option<Vec<ipnet::IpNet>>,
    /// The ConfigMap with the sidecar's `config.yaml`.
    pub config_map: String,
    /// The host directory with the Workload API socket (`agent.sock`).
    pub spire_socket_dir: String,
    /// The seccomp profile, relative to the kubelet's seccomp root; `None`: the runtime's
    /// default (io_uring denied: the proxy runs on epoll and reports it).
    pub seccomp_profile: Option<String>,
    /// The sidecar's health port (the kubelet's probes and Prometheus).
    pub health_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        let v = env!("CARGO_PKG_VERSION");
        Self {
            proxy_image: format!("localhost/ringmesh/proxy:{v}"),
            init_image: format!("localhost/ringmesh/init:{v}"),
            proxy_uid: 1337,
            backend: "nftables".into(),
            udp: false,
            exclude_inbound_ports: None,
            exclude_outbound_ports: None,
            exclude_outbound_cidrs: None,
            config_map: "ringmesh-sidecar".into(),
            spire_socket_dir: "/run/spire/sockets".into(),
            seccomp_profile: Some("profiles/ringmesh.json".into()),
            health_port: 15020,
        }
    }
}

/// What went wrong, naming the document and the object.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("input is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("input is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("document {doc} ({what}): {msg}")]
    Object {
        doc: usize,
        what: String,
        msg: String,
    },
}

/// What happened to each pod template, for the operator (stderr).
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

/// Injects every pod template in `input` (YAML or JSON); returns the output in the same
/// format and a line per pod template.
pub fn inject(input: &str, opts: &Options) -> Result<(String, Report), InjectError> {
    transform(input, &mut |pod, what, report| {
        inject_pod(pod, opts, what, report)
    })
}

/// Removes exactly what [`inject`] added, restoring the original probes.
pub fn uninject(input: &str) -> Result<(String, Report), InjectError> {
    transform(input, &mut |pod, what, report| {
        uninject_pod(pod, what, report)
    })
}

type PodFn<'a> = dyn FnMut(&mut Mapping, &str, &mut Report) -> Result<(), String> + 'a;

fn is_json(input: &str) -> bool {
    matches!(input.trim_start().as_bytes().first(), Some(b'{' | b'['))
}

fn transform(input: &str, f: &mut PodFn<'_>) -> Result<(String, Report), InjectError> {
    let json = is_json(input);
    let mut docs: Vec<Value> = Vec::new();
    if json {
        for v in serde_json::Deserializer::from_str(input).into_iter::<Value>() {
            docs.push(v?);
        }
    } else {
        for d in serde_yaml::Deserializer::from_str(input) {
            let v = <Value as serde::Deserialize>::deserialize(d)?;
            // An empty document (a trailing `---`) carries nothing.
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    let mut report = Report::default();
    for (i, doc) in docs.iter_mut().enumerate() {
        visit(doc, f, &mut report).map_err(|(what, msg)| InjectError::Object {
            doc: i + 1,
            what,
            msg,
        })?;
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if json {
            out.push_str(&serde_json::to_string_pretty(doc)?);
            out.push('\n');
        } else {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&serde_yaml::to_string(doc)?);
        }
    }
    Ok((out, report))
}

fn get<'a>(m: &'a Mapping, k: &str) -> Option<&'a Value> {
    m.get(k)
}

fn get_mut<'a>(m: &'a mut Mapping, k: &str) -> Option<&'a mut Value> {
    m.get_mut(k)
}

fn str_of<'a>(m: &'a Mapping, k: &str) -> Option<&'a str> {
    get(m, k).and_then(Value::as_str)
}

/// Kind/name, for messages.
fn describe(doc: &Mapping) -> String {
    let kind = str_of(doc, "kind").unwrap_or("?");
    let name = get(doc, "metadata")
        .and_then(Value::as_mapping)
        .and_then(|m| str_of(m, "name"))
        .unwrap_or("?");
    format!("{kind}/{name}")
}

fn visit(doc: &mut Value, f: &mut PodFn<'_>, report: &mut Report) -> Result<(), (String, String)> {
    let Some(m) = doc.as_mapping_mut() else {
        return Ok(());
    };
    let what = describe(m);
    let kind = str_of(m, "kind").unwrap_or("").to_string();
    let path: &[&str] = match kind.as_str() {
        "List" => {
            if let Some(items) = get_mut(m, "items").and_then(Value::as_sequence_mut) {
                for item in items {
                    visit(item, f, report)?;
                }
            }
            return Ok(());
        }
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };
    let mut pod: &mut Mapping = m;
    for k in path {
        pod = match get_mut(pod, k).and_then(Value::as_mapping_mut) {
            Some(p) => p,
            None => return Err((what, format!("has no {}", path.join(".")))),
        };
    }
    f(pod, &what, report).map_err(|msg| (what, msg))
}

fn mapping_entry<'a>(m: &'a mut Mapping, k: &str) -> &'a mut Mapping {
    let v = m
        .entry(Value::from(k))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !v.is_mapping() {
        *v = Value::Mapping(Mapping::new());
    }
    match v {
        Value::Mapping(m) => m,
        _ => unreachable!("just made a mapping"),
    }
}

fn sequence_entry<'a>(m: &'a mut Mapping, k: &str) -> &'a mut Vec<Value> {
    let v = m
        .entry(Value::from(k))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if !v.is_sequence() {
        *v = Value::Sequence(Vec::new());
    }
    match v {
        Value::Sequence(s) => s,
        _ => unreachable!("just made a sequence"),
    }
}

fn annotations(pod: &Mapping) -> Option<&Mapping> {
    get(pod, "metadata")
        .and_then(Value::as_mapping)
        .and_then(|m| get(m, "annotations"))
        .and_then(Value::as_mapping)
}

fn annotation<'a>(pod: &'a Mapping, k: &str) -> Option<&'a str> {
    annotations(pod).and_then(|a| str_of(a, k))
}

fn label<'a>(pod: &'a Mapping, k: &str) -> Option<&'a str> {
    get(pod, "metadata")
        .and_then(Value::as_mapping)
        .and_then(|m| get(m, "labels"))
        .and_then(Value::as_mapping)
        .and_then(|l| str_of(l, k))
}

fn has_container(spec: &Mapping, list: &str, name: &str) -> bool {
    get(spec, list)
        .and_then(Value::as_sequence)
        .is_some_and(|s| {
            s.iter().any(|c| {
                c.as_mapping()
                    .and_then(|c| str_of(c, "name"))
                    .is_some_and(|n| n == name)
            })
        })
}

/// A comma-separated list from an annotation, each item parsed.
fn parse_list<T: std::str::FromStr>(key: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("annotation {key}: {s:?} is not valid"))
        })
        .collect()
}

/// The excluded items a pod ends up with: its annotations (ours and NSM's, which must agree
/// with each other) or the command line's; when both are given they must agree (as NGINX
/// Service Mesh's injector requires), so that no annotation is silently overridden.
fn resolve_list<T>(
    pod: &Mapping,
    keys: &[&str],
    cli: Option<&Vec<T>>,
    flag: &str,
) -> Result<Vec<T>, String>
where
    T: std::str::FromStr + Ord + Clone + std::fmt::Debug,
{
    let mut from_pod: Option<(String, BTreeSet<T>)> = None;
    for k in keys {
        if let Some(v) = annotation(pod, k) {
            let set: BTreeSet<T> = parse_list(k, v)?.into_iter().collect();
            if let Some((other, prev)) = &from_pod
                && *prev != set
            {
                return Err(format!("annotations {other} and {k} disagree"));
            }
            from_pod = Some(((*k).to_string(), set));
        }
    }
    let from_cli: Option<BTreeSet<T>> = cli.map(|v| v.iter().cloned().collect());
    match (from_pod, from_cli) {
        (Some((k, p)), Some(c)) if p != c => Err(format!(
            "annotation {k} ({p:?}) disagrees with {flag} ({c:?}); remove one"
        )),
        (Some((_, p)), _) => Ok(p.into_iter().collect()),
        (None, Some(c)) => Ok(c.into_iter().collect()),
        (None, None) => Ok(Vec::new()),
    }
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    let mut s = String::new();
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{x}");
    }
    s
}

/// A named container port's number.
fn resolve_port(container: &Mapping, port: &Value) -> Result<u16, String> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("probe port {n} is out of range"));
    }
    let Some(name) = port.as_str() else {
        return Err("probe port is neither a number nor a name".into());
    };
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    get(container, "ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(Value::as_mapping)
        .find(|p| str_of(p, "name") == Some(name))
        .and_then(|p| get(p, "containerPort"))
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("probe port {name:?} names no port of the container"))
}

/// The handler the sidecar runs for a rewritten probe: the original with its port resolved.
fn app_probe(container: &Mapping, probe: &Mapping) -> Result<Option<Value>, String> {
    let mut handler = Mapping::new();
    if let Some(h) = get(probe, "httpGet").and_then(Value::as_mapping) {
        let mut h = h.clone();
        let port = resolve_port(container, get(&h, "port").unwrap_or(&Value::Null))?;
        h.insert("port".into(), port.into());
        handler.insert("httpGet".into(), Value::Mapping(h));
    } else if let Some(t) = get(probe, "tcpSocket").and_then(Value::as_mapping) {
        let mut t = t.clone();
        let port = resolve_port(container, get(&t, "port").unwrap_or(&Value::Null))?;
        t.insert("port".into(), port.into());
        handler.insert("tcpSocket".into(), Value::Mapping(t));
    } else {
        // exec runs in the app's container and needs no help; gRPC probes are left as they
        // are (see the report line).
        return Ok(None);
    }
    if let Some(t) = get(probe, "timeoutSeconds") {
        handler.insert("timeoutSeconds".into(), t.clone());
    }
    Ok(Some(Value::Mapping(handler)))
}

fn inject_pod(
    pod: &mut Mapping,
    opts: &Options,
    what: &str,
    report: &mut Report,
) -> Result<(), String> {
    if annotation(pod, STATUS_ANNOTATION).is_some() {
        report
            .lines
            .push(format!("{what}: already injected, unchanged"));
        return Ok(());
    }
    if annotation(pod, INJECT_ANNOTATION) == Some("false")
        || label(pod, NSM_INJECT_LABEL) == Some("disabled")
    {
        report
            .lines
            .push(format!("{what}: injection disabled by the pod, unchanged"));
        return Ok(());
    }
    let spec_v = get(pod, "spec").ok_or("the pod template has no spec")?;
    let spec = spec_v.as_mapping().ok_or("the pod spec is not a mapping")?;
    if get(spec, "hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(
            "uses the host's network: a sidecar would intercept the node's traffic; \
                    mark it ringmesh.io/inject: \"false\" or use node mode"
                .into(),
        );
    }
    for list in ["initContainers", "containers"] {
        for name in [INIT_NAME, PROXY_NAME] {
            if has_container(spec, list, name) {
                return Err(format!(
                    "already has a container named {name} but no {STATUS_ANNOTATION} annotation"
                ));
            }
        }
    }
    if let Some(vols) = get(spec, "volumes").and_then(Value::as_sequence) {
        for v in vols.iter().filter_map(Value::as_mapping) {
            if let Some(n) = str_of(v, "name").filter(|n| VOLUMES.contains(n)) {
                return Err(format!("already has a volume named {n}"));
            }
        }
    }

    let inbound: Vec<u16> = resolve_list(
        pod,
        &INBOUND_ANNOTATIONS,
        opts.exclude_inbound_ports.as_ref(),
        "--exclude-inbound-ports",
    )?;
    let outbound: Vec<u16> = resolve_list(
        pod,
        &OUTBOUND_ANNOTATIONS,
        opts.exclude_outbound_ports.as_ref(),
        "--exclude-outbound-ports",
    )?;
    let cidrs: Vec<ipnet::IpNet> = resolve_list(
        pod,
        &[CIDR_ANNOTATION],
        opts.exclude_outbound_cidrs.as_ref(),
        "--exclude-outbound-cidrs",
    )?;
    let udp = match annotation(pod, UDP_ANNOTATION) {
        None => opts.udp,
        Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(format!(
                "annotation {UDP_ANNOTATION}: {v:?} is not true or false"
            ));
        }
    };

    // Rewrite the app's probes, remembering the originals verbatim.
    let mut originals = Mapping::new();
    let mut app_probes = Mapping::new();
    let mut notes = Vec::new();
    let spec = get_mut(pod, "spec")
        .and_then(Value::as_mapping_mut)
        .ok_or("the pod spec is not a mapping")?;
    if let Some(containers) = get_mut(spec, "containers").and_then(Value::as_sequence_mut) {
        for c in containers.iter_mut().filter_map(Value::as_mapping_mut) {
            let cname = str_of(c, "name").unwrap_or("").to_string();
            let mut saved = Mapping::new();
            for (field, short) in PROBES {
                let Some(probe) = get(c, field).and_then(Value::as_mapping) else {
                    continue;
                };
                if get(probe, "grpc").is_some() {
                    notes.push(format!(
                        "{cname}.{field} is a gRPC probe: left as it is, so it needs the app port \
                         permissive or excluded"
                    ));
                    continue;
                }
                let Some(handler) =
                    app_probe(c, probe).map_err(|e| format!("{cname}.{field}: {e}"))?
                else {
                    continue;
                };
                let path = format!("/app-health/{cname}/{short}");
                app_probes.insert(path.clone().into(), handler);
                let mut rewritten = probe.clone();
                rewritten.remove("httpGet");
                rewritten.remove("tcpSocket");
                let mut http = Mapping::new();
                http.insert("path".into(), path.into());
                http.insert("port".into(), opts.health_port.into());
                http.insert("scheme".into(), "HTTP".into());
                rewritten.insert("httpGet".into(), Value::Mapping(http));
                saved.insert(field.into(), Value::Mapping(probe.clone()));
                c.insert(field.into(), Value::Mapping(rewritten));
            }
            if !saved.is_empty() {
                originals.insert(cname.into(), Value::Mapping(saved));
            }
        }
    }

    let had_init = get(spec, "initContainers").is_some();
    let had_volumes = get(spec, "volumes").is_some();
    let init = init_container(opts, &inbound, &outbound, &cidrs, udp);
    let proxy = proxy_container(opts, &app_probes)?;
    let inits = sequence_entry(spec, "initContainers");
    inits.insert(0, proxy);
    inits.insert(0, init);
    let vols = sequence_entry(spec, "volumes");
    vols.extend(volumes(opts, udp));

    let had_metadata = get(pod, "metadata").is_some();
    let meta = mapping_entry(pod, "metadata");
    let had_annotations = get(meta, "annotations").is_some();
    let mut status = Mapping::new();
    status.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    let mut created = Vec::new();
    for (flag, name) in [
        (had_metadata, "metadata"),
        (had_annotations, "annotations"),
        (had_init, "initContainers"),
        (had_volumes, "volumes"),
    ] {
        if !flag {
            created.push(Value::from(name));
        }
    }
    status.insert("created".into(), Value::Sequence(created));
    if !originals.is_empty() {
        status.insert("probes".into(), Value::Mapping(originals));
    }
    let status = serde_json::to_string(&Value::Mapping(status)).map_err(|e| e.to_string())?;
    mapping_entry(meta, "annotations").insert(STATUS_ANNOTATION.into(), status.into());

    let mut line = format!("{what}: injected");
    if !app_probes.is_empty() {
        let _ = write!(line, ", {} probe(s) rewritten", app_probes.len());
    }
    if udp {
        line.push_str(", UDP intercepted");
    }
    report.lines.push(line);
    for n in notes {
        report.lines.push(format!("{what}: {n}"));
    }
    Ok(())
}

fn security_context(pairs: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert((*k).into(), v.clone());
    }
    Value::Mapping(m)
}

fn caps(add: &[&str]) -> Value {
    let mut m = Mapping::new();
    if !add.is_empty() {
        m.insert(
            "add".into(),
            Value::Sequence(add.iter().map(|c| Value::from(*c)).collect()),
        );
    }
    m.insert("drop".into(), Value::Sequence(vec!["ALL".into()]));
    Value::Mapping(m)
}

fn init_container(
    opts: &Options,
    inbound: &[u16],
    outbound: &[u16],
    cidrs: &[ipnet::IpNet],
    udp: bool,
) -> Value {
    // The health port is reached by the kubelet without the sidecar in the way.
    let mut inbound: Vec<u16> = inbound.to_vec();
    if !inbound.contains(&opts.health_port) {
        inbound.push(opts.health_port);
    }
    inbound.sort_unstable();
    let mut args: Vec<Value> = vec![
        "install".into(),
        "--backend".into(),
        opts.backend.clone().into(),
        "--proxy-uid".into(),
        opts.proxy_uid.to_string().into(),
        // The sidecar has no CAP_NET_ADMIN to set a socket mark: it passes by its uid.
        "--no-mark".into(),
        "--exclude-inbound-ports".into(),
        join(&inbound).into(),
    ];
    if !outbound.is_empty() {
        args.push("--exclude-outbound-ports".into());
        args.push(join(outbound).into());
    }
    if !cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".into());
        args.push(join(cidrs).into());
    }
    let mut add = vec!["NET_ADMIN", "NET_RAW"];
    if udp {
        args.push("--udp".into());
        add.push("BPF");
    }
    let mut c = Mapping::new();
    c.insert("name".into(), INIT_NAME.into());
    c.insert("image".into(), opts.init_image.clone().into());
    c.insert("args".into(), Value::Sequence(args));
    c.insert(
        "securityContext".into(),
        security_context(&[
            ("runAsUser", 0.into()),
            ("runAsNonRoot", false.into()),
            ("privileged", false.into()),
            ("allowPrivilegeEscalation", false.into()),
            ("capabilities", caps(&add)),
        ]),
    );
    c.insert("resources".into(), resources("10m", "16Mi", None));
    if udp {
        c.insert(
            "volumeMounts".into(),
            Value::Sequence(vec![mount("ringmesh-bpf", "/sys/fs/bpf", false)]),
        );
    }
    Value::Mapping(c)
}

fn resources(cpu: &str, memory: &str, memory_limit: Option<&str>) -> Value {
    let mut req = Mapping::new();
    req.insert("cpu".into(), cpu.into());
    req.insert("memory".into(), memory.into());
    let mut r = Mapping::new();
    r.insert("requests".into(), Value::Mapping(req));
    if let Some(l) = memory_limit {
        let mut lim = Mapping::new();
        lim.insert("memory".into(), l.into());
        r.insert("limits".into(), Value::Mapping(lim));
    }
    Value::Mapping(r)
}

fn mount(name: &str, path: &str, read_only: bool) -> Value {
    let mut m = Mapping::new();
    m.insert("name".into(), name.into());
    m.insert("mountPath".into(), path.into());
    if read_only {
        m.insert("readOnly".into(), true.into());
    }
    Value::Mapping(m)
}

fn env_value(name: &str, value: &str) -> Value {
    let mut m = Mapping::new();
    m.insert("name".into(), name.into());
    m.insert("value".into(), value.into());
    Value::Mapping(m)
}

fn env_field(name: &str, path: &str) -> Value {
    let mut field = Mapping::new();
    field.insert("fieldPath".into(), path.into());
    let mut from = Mapping::new();
    from.insert("fieldRef".into(), Value::Mapping(field));
    let mut m = Mapping::new();
    m.insert("name".into(), name.into());
    m.insert("valueFrom".into(), Value::Mapping(from));
    Value::Mapping(m)
}

fn http_probe(path: &str, port: u16, period: u64, failures: u64) -> Value {
    let mut http = Mapping::new();
    http.insert("path".into(), path.into());
    http.insert("port".into(), port.into());
    let mut p = Mapping::new();
    p.insert("httpGet".into(), Value::Mapping(http));
    p.insert("periodSeconds".into(), period.into());
    p.insert("failureThreshold".into(), failures.into());
    Value::Mapping(p)
}

fn proxy_container(opts: &Options, app_probes: &Mapping) -> Result<Value, String> {
    let health = format!("0.0.0.0:{}", opts.health_port);
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("NODE_NAME", "spec.nodeName"),
        env_field("POD_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env_value("RINGMESH_CONFIG", "/etc/ringmesh/config.yaml"),
        env_value("RINGMESH_HEALTH", &health),
        env_value("RINGMESH_LOG_FORMAT", "json"),
    ];
    if !app_probes.is_empty() {
        let json = serde_json::to_string(&Value::Mapping(app_probes.clone()))
            .map_err(|e| e.to_string())?;
        env.push(env_value("RINGMESH_APP_PROBES", &json));
    }
    let mut port = Mapping::new();
    port.insert("name".into(), "ringmesh-health".into());
    port.insert("containerPort".into(), opts.health_port.into());
    port.insert("protocol".into(), "TCP".into());
    let mut sc = vec![
        ("runAsUser", Value::from(opts.proxy_uid)),
        ("runAsGroup", Value::from(opts.proxy_uid)),
        ("runAsNonRoot", true.into()),
        ("privileged", false.into()),
        ("allowPrivilegeEscalation", false.into()),
        ("readOnlyRootFilesystem", true.into()),
        ("capabilities", caps(&[])),
    ];
    let profile = match &opts.seccomp_profile {
        Some(p) => {
            let mut m = Mapping::new();
            m.insert("type".into(), "Localhost".into());
            m.insert("localhostProfile".into(), p.clone().into());
            m
        }
        None => {
            let mut m = Mapping::new();
            m.insert("type".into(), "RuntimeDefault".into());
            m
        }
    };
    sc.push(("seccompProfile", Value::Mapping(profile)));
    let mut c = Mapping::new();
    c.insert("name".into(), PROXY_NAME.into());
    c.insert("image".into(), opts.proxy_image.clone().into());
    // A native sidecar: started before the app containers, kept running beside them, ended
    // after them; a Job's pod completes when its app does.
    c.insert("restartPolicy".into(), "Always".into());
    c.insert("env".into(), Value::Sequence(env));
    c.insert("ports".into(), Value::Sequence(vec![Value::Mapping(port)]));
    c.insert(
        "startupProbe".into(),
        http_probe("/ready", opts.health_port, 1, 60),
    );
    c.insert(
        "readinessProbe".into(),
        http_probe("/ready", opts.health_port, 5, 3),
    );
    c.insert(
        "livenessProbe".into(),
        http_probe("/live", opts.health_port, 10, 3),
    );
    c.insert("securityContext".into(), security_context(&sc));
    c.insert("resources".into(), resources("100m", "32Mi", Some("256Mi")));
    c.insert(
        "volumeMounts".into(),
        Value::Sequence(vec![
            mount("ringmesh-spire", "/run/spire/sockets", true),
            mount("ringmesh-config", "/etc/ringmesh", true),
            mount("ringmesh-state", "/var/lib/ringmesh", false),
        ]),
    );
    Ok(Value::Mapping(c))
}

fn volumes(opts: &Options, udp: bool) -> Vec<Value> {
    let host_path = |name: &str, path: &str, ty: &str| {
        let mut hp = Mapping::new();
        hp.insert("path".into(), path.into());
        hp.insert("type".into(), ty.into());
        let mut v = Mapping::new();
        v.insert("name".into(), name.into());
        v.insert("hostPath".into(), Value::Mapping(hp));
        Value::Mapping(v)
    };
    let mut cm = Mapping::new();
    cm.insert("name".into(), opts.config_map.clone().into());
    let mut config = Mapping::new();
    config.insert("name".into(), "ringmesh-config".into());
    config.insert("configMap".into(), Value::Mapping(cm));
    let mut state = Mapping::new();
    state.insert("name".into(), "ringmesh-state".into());
    let mut ed = Mapping::new();
    ed.insert("sizeLimit".into(), "16Mi".into());
    state.insert("emptyDir".into(), Value::Mapping(ed));
    let mut v = vec![
        host_path(
            "ringmesh-spire",
            &opts.spire_socket_dir,
            "DirectoryOrCreate",
        ),
        Value::Mapping(config),
        Value::Mapping(state),
    ];
    if udp {
        v.push(host_path("ringmesh-bpf", "/sys/fs/bpf", "Directory"));
    }
    v
}

fn remove_named(list: &mut Vec<Value>, names: &[&str]) {
    list.retain(|c| {
        !c.as_mapping()
            .and_then(|c| str_of(c, "name"))
            .is_some_and(|n| names.contains(&n))
    });
}

fn uninject_pod(pod: &mut Mapping, what: &str, report: &mut Report) -> Result<(), String> {
    let Some(status) = annotation(pod, STATUS_ANNOTATION) else {
        report
            .lines
            .push(format!("{what}: not injected, unchanged"));
        return Ok(());
    };
    let status: Value = serde_json::from_str(status)
        .map_err(|e| format!("annotation {STATUS_ANNOTATION} is not what inject writes: {e}"))?;
    let created: Vec<String> = status
        .get("created")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let was_created = |k: &str| created.iter().any(|c| c == k);
    let spec = get_mut(pod, "spec")
        .and_then(Value::as_mapping_mut)
        .ok_or("the pod template has no spec")?;
    for (list, names) in [
        ("initContainers", &[INIT_NAME, PROXY_NAME][..]),
        ("volumes", &VOLUMES[..]),
    ] {
        if let Some(s) = get_mut(spec, list).and_then(Value::as_sequence_mut) {
            remove_named(s, names);
            if s.is_empty() && was_created(list) {
                spec.remove(list);
            }
        }
    }
    if let Some(probes) = status.get("probes").and_then(Value::as_mapping)
        && let Some(containers) = get_mut(spec, "containers").and_then(Value::as_sequence_mut)
    {
        for c in containers.iter_mut().filter_map(Value::as_mapping_mut) {
            let name = str_of(c, "name").unwrap_or("").to_string();
            if let Some(saved) = probes.get(name.as_str()).and_then(Value::as_mapping) {
                for (field, original) in saved {
                    c.insert(field.clone(), original.clone());
                }
            }
        }
    }
    let meta = mapping_entry(pod, "metadata");
    let ann = mapping_entry(meta, "annotations");
    ann.remove(STATUS_ANNOTATION);
    if ann.is_empty() && was_created("annotations") {
        meta.remove("annotations");
    }
    if meta.is_empty() && was_created("metadata") {
        pod.remove("metadata");
    }
    report.lines.push(format!("{what}: uninjected"));
    Ok(())
}
