//! The development CA: a root it generates (or an intermediate loaded from files under an
//! upstream root) that mints X509-SVIDs.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ringmesh_core::SpiffeId;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating a key or certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} in it")]
    Pem { path: String, what: &'static str },
}

/// An SVID fresh from the CA.
#[derive(Clone)]
pub struct Minted {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own key, PEM (to save a generated CA).
    key_pem: String,
    /// Certificates between a leaf and the root (the CA's own, when it is an intermediate).
    intermediates: Vec<CertificateDer<'static>>,
    /// The trust bundle: the roots SVIDs chain to.
    bundle: Vec<CertificateDer<'static>>,
    serial: AtomicU64,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("intermediates", &self.intermediates.len())
            .field("bundle", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl DevCa {
    /// A fresh self-signed root for `trust_domain`, valid for a year.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(
            DnType::CommonName,
            format!("ringmesh dev CA {trust_domain}"),
        );
        p.distinguished_name
            .push(DnType::OrganizationName, "ringmesh");
        // The SPIFFE convention: a CA names its trust domain in a URI SAN.
        p.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        p.not_before = offset(now - Duration::from_secs(60));
        p.not_after = offset(now + Duration::from_secs(365 * 24 * 3600));
        let root = p.self_signed(&key)?.der().clone();
        Ok(Self {
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(p, key),
            intermediates: Vec::new(),
            bundle: vec![root],
            serial: AtomicU64::new(1),
        })
    }

    /// An existing CA from PEM files: its certificate and key, and the upstream root(s) it
    /// chains to. Without an upstream bundle the CA certificate is taken as its own root.
    pub fn from_files(cert: &Path, key: &Path, upstream: Option<&Path>) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| CaError::Read {
                path: p.display().to_string(),
                source: e,
            })
        };
        let pem_err = |p: &Path, what| CaError::Pem {
            path: p.display().to_string(),
            what,
        };
        let ca_cert = CertificateDer::from_pem_slice(&read(cert)?)
            .map_err(|_| pem_err(cert, "certificate"))?;
        let key_pem = String::from_utf8_lossy(&read(key)?).into_owned();
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|_| pem_err(key, "private key"))?;
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key_pair)?;
        let (intermediates, bundle) = match upstream {
            Some(u) => {
                let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(u)?)
                    .filter_map(Result::ok)
                    .collect();
                if roots.is_empty() {
                    return Err(pem_err(u, "certificate"));
                }
                (vec![ca_cert], roots)
            }
            None => (Vec::new(), vec![ca_cert]),
        };
        Ok(Self {
            key_pem,
            issuer,
            intermediates,
            bundle,
            serial: AtomicU64::new(1),
        })
    }

    /// The roots SVIDs chain to.
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The CA's certificate (the one that signs leaves) and key, PEM, to save it and use it
    /// again (`meshctl identity ca`, then `serve --ca-cert --ca-key`).
    pub fn to_pem(&self) -> (String, String) {
        let cert = self
            .intermediates
            .first()
            .or_else(|| self.bundle.first())
            .map(|c| crate::pem::encode("CERTIFICATE", c.as_ref()))
            .unwrap_or_default();
        (cert, self.key_pem.clone())
    }

    /// Mints a TLS server certificate for DNS names and IP addresses (and, when given, a
    /// SPIFFE ID): the NATS server's, verified by its clients like any TLS server.
    pub fn mint_server(
        &self,
        names: &[String],
        id: Option<&SpiffeId>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Minted, CaError> {
        let mut m = self.mint_with(id, names, ttl, now)?;
        m.chain.truncate(1 + self.intermediates.len());
        Ok(m)
    }

    /// Mints an SVID for `id`, valid from a little before `now` for `ttl`.
    pub fn mint(&self, id: &SpiffeId, ttl: Duration, now: SystemTime) -> Result<Minted, CaError> {
        self.mint_with(Some(id), &[], ttl, now)
    }

    fn mint_with(
        &self,
        id: Option<&SpiffeId>,
        names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Minted, CaError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::OrganizationName, "ringmesh");
        p.subject_alt_names = Vec::new();
        if let Some(id) = id {
            p.subject_alt_names
                .push(SanType::URI(id.to_string().try_into()?));
        }
        for n in names {
            p.subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into()?),
                });
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A little slack for clocks that disagree.
        p.not_before = offset(now - Duration::from_secs(30));
        p.not_after = offset(now + ttl);
        // Distinct serials, so a rotation is visible in every handshake.
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mut serial = nanos.to_be_bytes().to_vec();
        serial.extend_from_slice(&n.to_be_bytes());
        serial[0] &= 0x7f; // a positive INTEGER
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        let leaf = p.signed_by(&key, &self.issuer)?.der().clone();
        let mut chain = vec![leaf];
        chain.extend(self.intermediates.iter().cloned());
        Ok(Minted {
            chain,
            key: key.serialize_der(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_core::svid::{Role, TrustBundles, verify};
    use rustls_pki_types::UnixTime;

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap(),
        )
    }

    #[test]
    fn generated_root_mints_verifiable_svids() {
        let ca = DevCa::generate("example.org").unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap();
        let m = ca
            .mint(&id, Duration::from_secs(60), SystemTime::now())
            .unwrap();
        assert_eq!(m.chain.len(), 1);
        let mut b = TrustBundles::new();
        b.set("example.org", ca.bundle().to_vec());
        assert_eq!(verify(&m.chain, &b, now(), Role::Client).unwrap(), id);
        assert_eq!(verify(&m.chain, &b, now(), Role::Server).unwrap(), id);
        let again = ca
            .mint(&id, Duration::from_secs(60), SystemTime::now())
            .unwrap();
        let serial = |c: &CertificateDer<'_>| ringmesh_core::svid::inspect_leaf(c).unwrap().serial;
        assert_ne!(
            serial(&m.chain[0]),
            serial(&again.chain[0]),
            "every SVID has its own serial"
        );
    }

    #[test]
    fn intermediate_from_files_chains_to_the_upstream_root() {
        // An upstream root, and an intermediate it signed, written to files.
        let root_key = KeyPair::generate().unwrap();
        let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
        rp.distinguished_name
            .push(DnType::CommonName, "upstream root");
        rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = rp.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(rp, root_key);
        let int_key = KeyPair::generate().unwrap();
        let mut ip = CertificateParams::new(Vec::<String>::new()).unwrap();
        ip.distinguished_name
            .push(DnType::CommonName, "ringmesh intermediate");
        ip.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ip.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let int = ip.signed_by(&int_key, &root_issuer).unwrap();
        let dir = std::env::temp_dir().join(format!("ringmesh-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("int.pem"), int.pem()).unwrap();
        std::fs::write(dir.join("int.key"), int_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("root.pem"), root.pem()).unwrap();

        let ca = DevCa::from_files(
            &dir.join("int.pem"),
            &dir.join("int.key"),
            Some(&dir.join("root.pem")),
        )
        .unwrap();
        assert_eq!(
            ca.bundle(),
            &[root.der().clone()],
            "the bundle is the upstream root"
        );
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let m = ca
            .mint(&id, Duration::from_secs(60), SystemTime::now())
            .unwrap();
        assert_eq!(m.chain.len(), 2, "leaf and intermediate");
        let mut b = TrustBundles::new();
        b.set("example.org", vec![root.der().clone()]);
        assert_eq!(verify(&m.chain, &b, now(), Role::Client).unwrap(), id);
        // Without the intermediate the leaf does not reach the root.
        assert!(verify(&m.chain[..1], &b, now(), Role::Client).is_err());

        let missing = DevCa::from_files(&dir.join("nope.pem"), &dir.join("int.key"), None);
        assert!(matches!(missing, Err(CaError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
