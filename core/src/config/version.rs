//! A config's version as its source names it: the number a control plane (or the author of a
//! file) gave it, or, without one, a digest of its content, so that the same document always
//! has the same version and a changed one never keeps the old.

use std::cmp::Ordering;
use std::fmt;

use sha2::{Digest, Sha256};

use super::RawConfig;

/// A config version: `42`, or `sha256:0123456789ab` for a document without `version:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionId {
    /// The source's own number; numbered versions are ordered.
    Number(u64),
    /// The first 6 bytes of the SHA-256 of the document's canonical JSON form.
    Digest([u8; 6]),
}

impl VersionId {
    /// The version of `raw`: its `version` field, or its digest.
    pub fn of(raw: &RawConfig) -> Self {
        if let Some(n) = raw.version {
            return VersionId::Number(n);
        }
        // Canonical: struct fields in declaration order, maps sorted, so YAML and JSON
        // spellings of the same config agree.
        let json = serde_json::to_vec(raw).unwrap_or_default();
        let hash = Sha256::digest(&json);
        let mut d = [0u8; 6];
        d.copy_from_slice(&hash[..6]);
        VersionId::Digest(d)
    }

    /// The number, for a numbered version.
    pub fn number(self) -> Option<u64> {
        match self {
            VersionId::Number(n) => Some(n),
            VersionId::Digest(_) => None,
        }
    }

    /// Whether `self` is newer than `other`, when both are numbered; `None` when they cannot
    /// be compared (a digest is not ordered).
    pub fn newer_than(self, other: VersionId) -> Option<bool> {
        match (self, other) {
            (VersionId::Number(a), VersionId::Number(b)) => Some(a.cmp(&b) == Ordering::Greater),
            _ => None,
        }
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionId::Number(n) => write!(f, "{n}"),
            VersionId::Digest(d) => {
                f.write_str("sha256:")?;
                for b in d {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}
