//! How the mesh config is laid out in the JetStream key-value bucket, and how a proxy puts a
//! version back together. Pure functions: no connection, no clock.
//!
//! A config does not fit one NATS message (1 MiB by default) once a mesh has thousands of
//! services, so each scope stores it as parts:
//!
//! | key | value |
//! | --- | --- |
//! | `<scope>.base` | the live config without its services (a JSON object) |
//! | `<scope>.svc.<name>` | one service (a JSON object with that `name`) |
//! | `<scope>.manifest` | `{"version": N, "parts": {"<key>": {"revision": R, "sha256": "..."}, ...}}` |
//!
//! where `<scope>` is `mesh`, `node.<name>` or `workload.<name>` (names escaped: characters
//! other than letters, digits, `-`, `_` and `/` become `=XX`). A push writes the parts that
//! changed, then the manifest, which names the exact revision of every part. A proxy applies
//! a version only when every part its manifest names is present at that revision, so it
//! never applies half a push; until then it keeps what it has.
//!
//! Scopes layer: the mesh-wide config, then the override for the proxy's node, then the one
//! for its workload. An override's base replaces the top-level fields it names (and only
//! those); its services replace the mesh's services of the same name or add to them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The largest part a proxy accepts (a NATS server's default `max_payload` is 1 MiB; parts
/// stay well below so that a config built for the limit cannot fail near it).
pub const MAX_PART: usize = 768 * 1024;

/// The largest manifest: it names every part (about 45 bytes each, so some 20,000 services
/// per scope) and must fit one message under the default `max_payload` of 1 MiB.
pub const MAX_MANIFEST: usize = 1000 * 1024;

/// Top-level fields that take a restart and are never carried over NATS.
pub const RESTART_ONLY: &[&str] = &[
    "listeners",
    "admin",
    "identity",
    "workers",
    "control_plane",
    "bypass_mark",
];

/// Whose config a set of keys is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every proxy.
    Mesh,
    /// The proxies on one node.
    Node(String),
    /// One workload's proxy.
    Workload(String),
}

impl Scope {
    /// `mesh`, `node/NAME` or `workload/NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("scope {s:?}: want mesh, node/NAME or workload/NAME");
        match s.split_once('/') {
            None if s == "mesh" => Ok(Scope::Mesh),
            Some(("node", n)) if !n.is_empty() => Ok(Scope::Node(n.to_string())),
            Some(("workload", n)) if !n.is_empty() => Ok(Scope::Workload(n.to_string())),
            _ => Err(bad()),
        }
    }

    /// The key prefix: `mesh`, `node.<name>`, `workload.<name>`.
    pub fn prefix(&self) -> String {
        match self {
            Scope::Mesh => "mesh".into(),
            Scope::Node(n) => format!("node.{}", escape(n)),
            Scope::Workload(n) => format!("workload.{}", escape(n)),
        }
    }

    pub fn manifest_key(&self) -> String {
        format!("{}.manifest", self.prefix())
    }

    pub fn base_key(&self) -> String {
        format!("{}.base", self.prefix())
    }

    pub fn service_key(&self, name: &str) -> String {
        format!("{}.svc.{}", self.prefix(), escape(name))
    }

    /// The service name a key of this scope stands for, if it is a service key.
    pub fn service_of(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&self.prefix())?.strip_prefix(".svc.")?;
        unescape(rest)
    }

    /// Whether `key` is one of this scope's parts (escaped names hold no `.`, so a prefix
    /// names exactly one scope).
    fn owns(&self, key: &str) -> bool {
        key != self.manifest_key()
            && key
                .strip_prefix(&self.prefix())
                .is_some_and(|r| r.starts_with('.'))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Mesh => f.write_str("mesh"),
            Scope::Node(n) => write!(f, "node/{n}"),
            Scope::Workload(n) => write!(f, "workload/{n}"),
        }
    }
}

/// A name as one key token: letters, digits, `-`, `_` and `/` stay, everything else
/// (including `.`, which separates tokens, and `=`) becomes `=XX`.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02x}"));
        }
    }
    out
}

pub fn unescape(token: &str) -> Option<String> {
    let mut out = Vec::with_capacity(token.len());
    let b = token.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a push wrote last: the version, and the revision and digest of every part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u64,
    pub parts: BTreeMap<String, Part>,
    /// Unix seconds, for `meshctl status`.
    #[serde(default)]
    pub published_at: u64,
}

/// One part as a manifest names it; written compactly as `"REVISION:DIGEST"`, since a
/// manifest names every part of a scope in one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub revision: u64,
    /// [`digest`] of the value: a push skips an unchanged part, a proxy checks it.
    pub sha256: String,
}

impl Serialize for Part {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}:{}", self.revision, self.sha256))
    }
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (rev, sha) = s
            .split_once(':')
            .ok_or_else(|| serde::de::Error::custom("a part is \"REVISION:DIGEST\""))?;
        Ok(Part {
            revision: rev.parse().map_err(serde::de::Error::custom)?,
            sha256: sha.to_string(),
        })
    }
}

/// The first 8 bytes of a value's SHA-256, in hex: enough to tell an unchanged part from a
/// changed one (it guards against mistakes, not adversaries; those are kept out by TLS and
/// the bucket's permissions).
pub fn digest(value: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The version of each scope a proxy runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub mesh: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<u64>,
}

impl Versions {
    fn parts(self) -> [u64; 3] {
        [
            self.mesh,
            self.node.unwrap_or(0),
            self.workload.unwrap_or(0),
        ]
    }

    /// Newer: no scope went back and at least one went forward.
    pub fn newer_than(self, other: Versions) -> bool {
        let (a, b) = (self.parts(), other.parts());
        a.iter().zip(&b).all(|(x, y)| x >= y) && a != b
    }

    /// Older: some scope went back (an old manifest, replayed or re-pushed).
    pub fn older_than(self, other: Versions) -> bool {
        self.parts().iter().zip(&other.parts()).any(|(x, y)| x < y)
    }
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mesh)?;
        match (self.node, self.workload) {
            (None, None) => Ok(()),
            (n, w) => {
                let mut extra = Vec::new();
                if let Some(n) = n {
                    extra.push(format!("node {n}"));
                }
                if let Some(w) = w {
                    extra.push(format!("workload {w}"));
                }
                write!(f, " ({})", extra.join(", "))
            }
        }
    }
}

/// The latest value of every key, as a watch delivers them.
#[derive(Debug, Default, Clone)]
pub struct KeySpace {
    entries: HashMap<String, (u64, bytes::Bytes)>,
}

impl KeySpace {
    pub fn put(&mut self, key: String, revision: u64, value: bytes::Bytes) {
        self.entries.insert(key, (revision, value));
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    pub fn get(&self, key: &str) -> Option<&(u64, bytes::Bytes)> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys of a scope (its parts and its manifest).
    pub fn keys_of<'a>(&'a self, scope: &'a Scope) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("{}.", scope.prefix());
        self.entries
            .keys()
            .filter(move |k| k.starts_with(&prefix))
            .map(String::as_str)
    }
}

/// One scope, read from the key space.
#[derive(Debug, Clone, PartialEq)]
pub enum ScopeState {
    /// Nothing was ever pushed to it.
    Absent,
    /// Its manifest names a part that has not arrived at that revision (yet).
    Incomplete {
        version: u64,
        key: String,
        revision: u64,
    },
    /// A complete version.
    Ready {
        version: u64,
        base: Map<String, Value>,
        services: BTreeMap<String, Value>,
    },
    /// A complete version that is wrong as it stands.
    Invalid {
        version: Option<u64>,
        errors: Vec<String>,
    },
}

/// Reads `scope`'s newest version out of `keys`.
pub fn read_scope(keys: &KeySpace, scope: &Scope) -> ScopeState {
    let mkey = scope.manifest_key();
    let Some((_, raw)) = keys.get(&mkey) else {
        return ScopeState::Absent;
    };
    if raw.len() > MAX_MANIFEST {
        return ScopeState::Invalid {
            version: None,
            errors: vec![format!(
                "{mkey}: {} bytes, above the {} KiB limit",
                raw.len(),
                MAX_MANIFEST / 1024
            )],
        };
    }
    let manifest: Manifest = match serde_json::from_slice(raw) {
        Ok(m) => m,
        Err(e) => {
            return ScopeState::Invalid {
                version: None,
                errors: vec![format!("{mkey}: {e}")],
            };
        }
    };
    let version = manifest.version;
    let mut errors = Vec::new();
    let mut base = Map::new();
    let mut services = BTreeMap::new();
    for (key, part_ref) in &manifest.parts {
        let want = part_ref.revision;
        if !scope.owns(key) {
            errors.push(format!(
                "{mkey}: names {key:?}, which is not a part of {scope}"
            ));
            continue;
        }
        match keys.get(key) {
            Some((rev, value)) if *rev == want => {
                if digest(value) != part_ref.sha256 {
                    errors.push(format!(
                        "{key}: its content does not match the manifest's digest"
                    ));
                    continue;
                }
                if value.len() > MAX_PART {
                    errors.push(format!(
                        "{key}: {} bytes, above the {} KiB limit of one part",
                        value.len(),
                        MAX_PART / 1024
                    ));
                    continue;
                }
                match serde_json::from_slice::<Value>(value) {
                    Err(e) => errors.push(format!("{key}: not valid JSON: {e}")),
                    Ok(v) => part(scope, key, v, &mut base, &mut services, &mut errors),
                }
            }
            // Missing, or overwritten by a later push whose manifest has not arrived yet.
            _ => {
                return ScopeState::Incomplete {
                    version,
                    key: key.clone(),
                    revision: want,
                };
            }
        }
    }
    if errors.is_empty() {
        ScopeState::Ready {
            version,
            base,
            services,
        }
    } else {
        ScopeState::Invalid {
            version: Some(version),
            errors,
        }
    }
}

fn part(
    scope: &Scope,
    key: &str,
    value: Value,
    base: &mut Map<String, Value>,
    services: &mut BTreeMap<String, Value>,
    errors: &mut Vec<String>,
) {
    if key == scope.base_key() {
        match value {
            Value::Object(map) => {
                for k in map.keys() {
                    if k == "services" {
                        errors.push(format!(
                            "{key}: services are parts of their own, not of the base"
                        ));
                    } else if RESTART_ONLY.contains(&k.as_str()) {
                        errors.push(format!(
                            "{key}: {k:?} takes a restart and is not set over NATS"
                        ));
                    }
                }
                *base = map;
            }
            _ => errors.push(format!("{key}: the base must be a JSON object")),
        }
        return;
    }
    let Some(name) = scope.service_of(key) else {
        errors.push(format!("{key}: not a base, service or manifest key"));
        return;
    };
    match value.get("name").and_then(Value::as_str) {
        Some(n) if n == name => {
            services.insert(name, value);
        }
        Some(n) => errors.push(format!(
            "{key}: the service is named {n:?}, but its key says {name:?}"
        )),
        None => errors.push(format!("{key}: a service needs a \"name\"")),
    }
}

/// A complete, layered config: the live part, as a document to validate.
#[derive(Debug, Clone, PartialEq)]
pub struct Layered {
    pub versions: Versions,
    pub document: Map<String, Value>,
}

/// Why no layered config can be made now.
#[derive(Debug, Clone, PartialEq)]
pub enum AssembleError {
    /// A scope waits for a part; try again when it (or a newer manifest) arrives.
    Incomplete {
        scope: Scope,
        version: u64,
        key: String,
        revision: u64,
    },
    /// A complete version is wrong; it is reported and skipped.
    Invalid {
        versions: Versions,
        errors: Vec<String>,
    },
}

/// Layers `scopes` (the mesh first, then each override) into one live config; `Ok(None)`
/// while nothing has been pushed to the mesh scope.
pub fn assemble(keys: &KeySpace, scopes: &[Scope]) -> Result<Option<Layered>, AssembleError> {
    let mut versions = Versions::default();
    let mut document = Map::new();
    let mut services = BTreeMap::new();
    let mut errors = Vec::new();
    for scope in scopes {
        let version = match read_scope(keys, scope) {
            ScopeState::Absent if *scope == Scope::Mesh => return Ok(None),
            ScopeState::Absent => continue,
            ScopeState::Incomplete {
                version,
                key,
                revision,
            } => {
                return Err(AssembleError::Incomplete {
                    scope: scope.clone(),
                    version,
                    key,
                    revision,
                });
            }
            ScopeState::Invalid { version, errors: e } => {
                errors.extend(e);
                version.unwrap_or(0)
            }
            ScopeState::Ready {
                version,
                base,
                services: s,
            } => {
                for (k, v) in base {
                    document.insert(k, v);
                }
                services.extend(s);
                version
            }
        };
        match scope {
            Scope::Mesh => versions.mesh = version,
            Scope::Node(_) => versions.node = Some(version),
            Scope::Workload(_) => versions.workload = Some(version),
        }
    }
    if !errors.is_empty() {
        return Err(AssembleError::Invalid { versions, errors });
    }
    document.insert(
        "services".into(),
        Value::Array(services.into_values().collect()),
    );
    Ok(Some(Layered { versions, document }))
}

#[cfg(test)]
mod tests;
