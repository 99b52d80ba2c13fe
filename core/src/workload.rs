//! Workload keys: which local workload (pod) a listener, a connection, an identity and a
//! metric series belong to. A sidecar serves exactly one workload; a node proxy serves every
//! meshed pod on its node, so nothing keyed by workload may assume there is only one.

use std::fmt;
use std::sync::Arc;

/// Longest key accepted (a Kubernetes `namespace/name` fits: 63 + 1 + 253).
pub const MAX_LEN: usize = 317;

/// A workload's name, such as `default/web-7d9f` (namespace and pod) or `sidecar`. Cheap to
/// clone: it is shared, never copied.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey(Arc<str>);

/// Why a string is not a workload key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadKeyError {
    #[error("a workload key cannot be empty")]
    Empty,
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("has the character {0:?}; only letters, digits, '-', '.', '_' and '/' are allowed")]
    Char(char),
}

impl WorkloadKey {
    /// The key a sidecar uses when it is given none.
    pub const SIDECAR: &'static str = "sidecar";

    pub fn parse(s: &str) -> Result<Self, WorkloadKeyError> {
        if s.is_empty() {
            return Err(WorkloadKeyError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(WorkloadKeyError::TooLong);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/')))
        {
            return Err(WorkloadKeyError::Char(c));
        }
        Ok(Self(s.into()))
    }

    /// The default sidecar workload.
    pub fn sidecar() -> Self {
        Self(Self::SIDECAR.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadKey({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert_eq!(
            WorkloadKey::parse("default/web-1").unwrap().as_str(),
            "default/web-1"
        );
        assert_eq!(WorkloadKey::parse(""), Err(WorkloadKeyError::Empty));
        assert_eq!(WorkloadKey::parse("a b"), Err(WorkloadKeyError::Char(' ')));
        assert_eq!(WorkloadKey::parse("a\"b"), Err(WorkloadKeyError::Char('"')));
        assert_eq!(
            WorkloadKey::parse(&"x".repeat(MAX_LEN + 1)),
            Err(WorkloadKeyError::TooLong)
        );
        assert_eq!(WorkloadKey::sidecar().to_string(), "sidecar");
    }
}
