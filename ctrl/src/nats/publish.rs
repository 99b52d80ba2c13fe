//! The control plane's side: the buckets, pushing a version as parts and a manifest, reading a
//! scope back, and reading every proxy's report. Used by `meshctl push`, `get` and `status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, stream};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value};

use super::connect::{self, TlsMaterial};
use super::follow::StatusReport;
use super::layout::{MAX_MANIFEST, MAX_PART, Manifest, Part, RESTART_ONLY, Scope, digest};

/// How long a proxy's report lives without a refresh (proxies refresh every 10 s).
pub const STATUS_TTL: Duration = Duration::from_secs(45);

/// Parts written at once during a push.
const IN_FLIGHT: usize = 64;

/// Connects once (a tool, not a long-lived follower: it fails rather than waits).
pub async fn connect(
    servers: &[String],
    material: Arc<dyn TlsMaterial>,
) -> Result<jetstream::Context, String> {
    let addrs = connect::servers(servers)?;
    let client = async_nats::ConnectOptions::new()
        .name("meshctl")
        .require_tls(true)
        .tls_client_config(connect::tls_config(material)?)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(addrs)
        .await
        .map_err(|e| format!("connecting to NATS: {e}"))?;
    Ok(jetstream::new(client))
}

/// The config and status buckets, created when missing. The streams are made by hand (as
/// `create_key_value` would make them) so that this works on nats-server 2.9 as on current
/// servers.
pub async fn ensure_buckets(
    js: &jetstream::Context,
    config: &str,
    status: &str,
    replicas: usize,
) -> Result<(kv::Store, kv::Store), String> {
    for (bucket, max_age) in [(config, Duration::ZERO), (status, STATUS_TTL)] {
        let name = format!("KV_{bucket}");
        if js.get_stream(&name).await.is_ok() {
            continue;
        }
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            max_message_size: i32::try_from(MAX_MANIFEST + 16 * 1024).unwrap_or(i32::MAX),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the {bucket:?} bucket: {e}"))?;
    }
    let get = |b: &str| {
        let b = b.to_string();
        async move {
            js.get_key_value(b.clone())
                .await
                .map_err(|e| format!("bucket {b:?}: {e}"))
        }
    };
    Ok((get(config).await?, get(status).await?))
}

/// A document in parts: the base (everything but the services), and each service by name.
pub type Parts = (Map<String, Value>, BTreeMap<String, Value>);

/// Splits a document into its parts; restart-only fields and unnamed or duplicate services
/// are errors.
pub fn split(mut document: Map<String, Value>) -> Result<Parts, Vec<String>> {
    let mut errors = Vec::new();
    for k in RESTART_ONLY {
        if document.contains_key(*k) {
            errors.push(format!(
                "{k}: takes a restart, so it is not pushed; set it in the proxy's own config file"
            ));
        }
    }
    document.remove("version");
    let mut services = BTreeMap::new();
    match document.remove("services") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, s) in list.into_iter().enumerate() {
                match s.get("name").and_then(Value::as_str).map(str::to_string) {
                    Some(name) if services.contains_key(&name) => {
                        errors.push(format!("services[{i}]: duplicate service name {name:?}"))
                    }
                    Some(name) => {
                        services.insert(name, s);
                    }
                    None => errors.push(format!("services[{i}]: a service needs a name")),
                }
            }
        }
        Some(_) => errors.push("services: must be a list".into()),
    }
    if errors.is_empty() {
        Ok((document, services))
    } else {
        Err(errors)
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub version: u64,
    /// Parts written (changed or new), and their bytes.
    pub written: usize,
    pub bytes: usize,
    /// Parts that were already there, unchanged.
    pub unchanged: usize,
    /// Parts of the previous version that this one no longer has.
    pub deleted: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The scope's current manifest and its revision.
pub async fn manifest(kv: &kv::Store, scope: &Scope) -> Result<Option<(Manifest, u64)>, String> {
    let key = scope.manifest_key();
    match kv.entry(key.clone()).await {
        Ok(Some(e)) if e.operation == kv::Operation::Put => {
            let m: Manifest =
                serde_json::from_slice(&e.value).map_err(|err| format!("{key}: {err}"))?;
            Ok(Some((m, e.revision)))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(format!("reading {key}: {e}")),
    }
}

/// Writes `document` (the live part of a config) to `scope` as version `version` (default:
/// the next one): the parts that changed, then the manifest (compare-and-set, so two pushes
/// at once cannot both win), then deletes parts the new version no longer has.
pub async fn push(
    kv: &kv::Store,
    scope: &Scope,
    document: Map<String, Value>,
    version: Option<u64>,
) -> Result<PushReport, Vec<String>> {
    let (base, services) = split(document)?;
    let current = manifest(kv, scope).await.map_err(|e| vec![e])?;
    let current_version = current.as_ref().map_or(0, |(m, _)| m.version);
    let version = version.unwrap_or(current_version + 1);
    if version <= current_version {
        return Err(vec![format!(
            "version {version} is not newer than {current_version}, the version in {scope}"
        )]);
    }
    let mut parts: Vec<(String, Vec<u8>)> = Vec::with_capacity(services.len() + 1);
    let encode = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    parts.push((scope.base_key(), encode(&Value::Object(base))));
    for (name, s) in &services {
        parts.push((scope.service_key(name), encode(s)));
    }
    let too_big: Vec<String> = parts
        .iter()
        .filter(|(_, v)| v.len() > MAX_PART)
        .map(|(k, v)| {
            format!(
                "{k}: {} bytes; one part holds at most {} KiB",
                v.len(),
                MAX_PART / 1024
            )
        })
        .collect();
    if !too_big.is_empty() {
        return Err(too_big);
    }
    let old = current.as_ref().map(|(m, _)| &m.parts);
    let mut named = BTreeMap::new();
    let mut to_write = Vec::new();
    for (key, value) in parts {
        let sha256 = digest(&value);
        match old.and_then(|o| o.get(&key)) {
            Some(p) if p.sha256 == sha256 => {
                named.insert(key, p.clone());
            }
            _ => to_write.push((key, value, sha256)),
        }
    }
    let unchanged = named.len();
    let (written, bytes) = (
        to_write.len(),
        to_write.iter().map(|(_, v, _)| v.len()).sum(),
    );
    let results: Vec<(String, Part)> = futures_util::stream::iter(to_write)
        .map(|(key, value, sha256)| async move {
            kv.put(key.clone(), value.into())
                .await
                .map(|revision| (key.clone(), Part { revision, sha256 }))
                .map_err(|e| format!("writing {key}: {e}"))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
        .map_err(|e| vec![e])?;
    named.extend(results);
    let gone: Vec<String> = old
        .map(|o| {
            o.keys()
                .filter(|k| !named.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let m = Manifest {
        version,
        parts: named,
        published_at: unix_now(),
    };
    let body = serde_json::to_vec(&m).unwrap_or_default();
    if body.len() > MAX_MANIFEST {
        return Err(vec![format!(
            "the manifest of {} parts is {} bytes, above the {} KiB one message may hold; \
             split the mesh into node or workload scopes",
            m.parts.len(),
            body.len(),
            MAX_MANIFEST / 1024
        )]);
    }
    let written_manifest = match &current {
        Some((_, revision)) => kv
            .update(scope.manifest_key(), body.into(), *revision)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        None => kv
            .create(scope.manifest_key(), body.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    written_manifest.map_err(|e| {
        vec![format!(
            "writing the manifest of {scope}: {e} (another push may have written a version \
             meanwhile; nothing of this one is in force: push again)"
        )]
    })?;
    for key in &gone {
        let _ = kv.delete(key).await;
    }
    Ok(PushReport {
        version,
        written,
        bytes,
        unchanged,
        deleted: gone.len(),
    })
}

/// The version in force in `scope`, as a document (the live part of a config).
pub async fn get(
    kv: &kv::Store,
    scope: &Scope,
) -> Result<Option<(u64, Map<String, Value>)>, String> {
    let Some((m, _)) = manifest(kv, scope).await? else {
        return Ok(None);
    };
    let mut doc = Map::new();
    let mut services = Vec::new();
    for (key, part) in &m.parts {
        let entry = kv
            .entry_for_revision(key.clone(), part.revision)
            .await
            .map_err(|e| format!("reading {key}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{key} at revision {} is gone (a newer push is under way?)",
                    part.revision
                )
            })?;
        let v: Value = serde_json::from_slice(&entry.value).map_err(|e| format!("{key}: {e}"))?;
        if *key == scope.base_key() {
            if let Value::Object(base) = v {
                doc.extend(base);
            }
        } else {
            services.push(v);
        }
    }
    doc.insert("version".into(), m.version.into());
    doc.insert("services".into(), Value::Array(services));
    Ok(Some((m.version, doc)))
}

/// Every proxy's report that has not expired.
///
/// Read with a watch of the latest value per key, up to the last one pending, rather than
/// with `keys()`, whose end-of-listing detection hangs against nats-server 2.9. An empty
/// bucket yields nothing: the first entry is waited for a second at most.
pub async fn statuses(status: &kv::Store) -> Result<Vec<StatusReport>, String> {
    tokio::time::timeout(Duration::from_secs(5), read_statuses(status))
        .await
        .map_err(|_| "reading reports timed out".to_string())?
}

async fn read_statuses(status: &kv::Store) -> Result<Vec<StatusReport>, String> {
    let mut out = Vec::new();
    let mut watch = status
        .watch_with_history(">")
        .await
        .map_err(|e| format!("reading reports: {e}"))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
        let Ok(Some(Ok(entry))) = next else { break };
        if entry.operation == kv::Operation::Put
            && let Ok(r) = serde_json::from_slice::<StatusReport>(&entry.value)
        {
            out.push(r);
        }
        if entry.delta == 0 {
            break;
        }
    }
    out.sort_by(|a, b| a.workload.cmp(&b.workload));
    out.dedup_by(|a, b| a.workload == b.workload);
    Ok(out)
}
