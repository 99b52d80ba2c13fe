//! X.509-SVIDs: the identity material a workload holds, and the checks a peer's certificate
//! chain must pass before its SPIFFE ID is believed.
//!
//! The rules are those of the X509-SVID specification: the leaf has exactly one URI SAN, a
//! valid `spiffe://` ID; it is not a CA and may not sign certificates or CRLs; it chains, within
//! its validity period, to a root in the trust bundle of *its own* trust domain. Time is an
//! argument: nothing here reads a clock.

use std::collections::HashMap;
use std::fmt;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate chain is not a valid X509-SVID for the trust bundles at hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    #[error("no certificate")]
    Empty,
    #[error("the certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("the leaf has no URI SAN")]
    NoUriSan,
    #[error("the leaf has {0} URI SANs; an SVID has exactly one")]
    ManyUriSans(usize),
    #[error("the URI SAN is not a SPIFFE ID: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    #[error("the leaf is a CA certificate")]
    LeafIsCa,
    #[error("the leaf may sign certificates or CRLs (keyCertSign/cRLSign)")]
    LeafCanSign,
    #[error("the leaf lacks the digitalSignature key usage")]
    NoDigitalSignature,
    #[error("no trust bundle for trust domain {0:?}")]
    UnknownTrustDomain(String),
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the chain does not lead to the trust bundle of {trust_domain}: {reason}")]
    Untrusted {
        trust_domain: String,
        reason: String,
    },
}

/// Trust bundles: the root certificates of each trust domain.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustBundles {
    roots: HashMap<String, Vec<CertificateDer<'static>>>,
}

impl fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (td, roots) in &self.roots {
            m.entry(td, &roots.len());
        }
        m.finish()
    }
}

impl TrustBundles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a trust domain's roots (replacing what was there).
    pub fn set(&mut self, trust_domain: impl Into<String>, roots: Vec<CertificateDer<'static>>) {
        self.roots.insert(trust_domain.into(), roots);
    }

    pub fn get(&self, trust_domain: &str) -> Option<&[CertificateDer<'static>]> {
        self.roots.get(trust_domain).map(Vec::as_slice)
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// What the X509-SVID rules say about a leaf, without its chain: its SPIFFE ID, serial and
/// validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks a leaf against the SVID rules that need no chain.
pub fn inspect_leaf(leaf: &[u8]) -> Result<LeafInfo, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(SvidError::Malformed(e.to_string())),
    };
    let id = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => SpiffeId::parse(one)?,
        many => return Err(SvidError::ManyUriSans(many.len())),
    };
    if cert.is_ca() {
        return Err(SvidError::LeafIsCa);
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err(SvidError::LeafCanSign);
            }
            if !ku.value.digital_signature() {
                return Err(SvidError::NoDigitalSignature);
            }
        }
        Ok(None) => return Err(SvidError::NoDigitalSignature),
        Err(e) => return Err(SvidError::Malformed(e.to_string())),
    }
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>();
    Ok(LeafInfo {
        id,
        serial,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The signature algorithms a chain may use.
static VERIFICATION_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Which way the certificate is presented, for its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A client proves itself to a server.
    Client,
    /// A server proves itself to a client.
    Server,
}

/// Verifies a peer's chain (leaf first) as an X509-SVID: the SVID rules, then the path to a
/// root of the trust bundle of the leaf's own trust domain, at `now`. Returns the peer's ID.
pub fn verify(
    chain: &[CertificateDer<'_>],
    bundles: &TrustBundles,
    now: UnixTime,
    role: Role,
) -> Result<SpiffeId, SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidError::Empty)?;
    let info = inspect_leaf(leaf)?;
    let td = info.id.trust_domain().to_string();
    let td = td.as_str();
    let roots = bundles
        .get(td)
        .ok_or_else(|| SvidError::UnknownTrustDomain(td.to_string()))?;
    let untrusted = |reason: String| SvidError::Untrusted {
        trust_domain: td.to_string(),
        reason,
    };
    let anchors: Vec<TrustAnchor<'_>> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    if anchors.is_empty() {
        return Err(untrusted("the bundle has no usable root".into()));
    }
    let ee = EndEntityCert::try_from(leaf).map_err(|e| SvidError::Malformed(format!("{e:?}")))?;
    let usage = match role {
        Role::Client => KeyUsage::client_auth(),
        Role::Server => KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        VERIFICATION_ALGS,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map(|_| info.id)
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => SvidError::Expired,
        webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
        other => untrusted(format!("{other:?}")),
    })
}

/// A workload's own identity: its SVID (chain and key) and the trust bundles it verifies
/// peers with. Cheap to clone (shared, immutable).
#[derive(Clone)]
pub struct Identity {
    pub leaf: LeafInfo,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: std::sync::Arc<PrivateKeyDer<'static>>,
    pub bundles: TrustBundles,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.leaf.id)
            .field("serial", &self.leaf.serial)
            .field("not_after", &self.leaf.not_after)
            .field("bundles", &self.bundles)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Checks our own SVID against the rules and our own bundle, at `now`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: TrustBundles,
        now: UnixTime,
    ) -> Result<Self, SvidError> {
        verify(&chain, &bundles, now, Role::Server)?;
        let leaf = inspect_leaf(chain.first().ok_or(SvidError::Empty)?)?;
        Ok(Self {
            leaf,
            chain,
            key: std::sync::Arc::new(key),
            bundles,
        })
    }

    /// Whether the SVID is still valid at `now` (Unix seconds).
    pub fn valid_at(&self, now: i64) -> bool {
        self.leaf.not_before <= now && now < self.leaf.not_after
    }
}

#[cfg(test)]
mod tests;
