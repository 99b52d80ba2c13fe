//! TLS connections to NATS: a list of servers, tried from the first connect with backoff,
//! mutual TLS with a client certificate that is either the workload's SVID (read at each
//! handshake, so a rotation needs no reconnect) or files; the server is verified against the
//! trust bundle, by name, as any TLS server.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::sync::mpsc;

/// Where the TLS material comes from at each handshake.
pub trait TlsMaterial: Send + Sync + fmt::Debug {
    /// The client certificate chain and key; `None` when there is none (yet).
    fn client_cert(&self) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>;
    /// The roots the server's certificate must chain to.
    fn roots(&self) -> Vec<CertificateDer<'static>>;
}

/// TLS material from PEM files, read once.
#[derive(Debug)]
pub struct FileMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
}

impl FileMaterial {
    /// `ca`: the roots for the server; `cert`/`key`: the client's chain and key.
    pub fn load(ca: &PathBuf, cert: &PathBuf, key: &PathBuf) -> Result<Self, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let roots: Vec<_> = CertificateDer::pem_slice_iter(&read(ca)?)
            .filter_map(Result::ok)
            .collect();
        if roots.is_empty() {
            return Err(format!("{}: no PEM certificate", ca.display()));
        }
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&read(cert)?)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(format!("{}: no PEM certificate", cert.display()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|e| format!("{}: no PEM private key: {e}", key.display()))?;
        Ok(Self { chain, key, roots })
    }

    /// A client certificate and key only; the roots come from elsewhere.
    pub fn client_only(cert: &PathBuf, key: &PathBuf) -> Result<Self, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&read(cert)?)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(format!("{}: no PEM certificate", cert.display()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|e| format!("{}: no PEM private key: {e}", key.display()))?;
        Ok(Self {
            chain,
            key,
            roots: Vec::new(),
        })
    }
}

impl TlsMaterial for FileMaterial {
    fn client_cert(&self) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        Some((self.chain.clone(), self.key.clone_key()))
    }
    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.clone()
    }
}

/// Resolves the client certificate from the material at each handshake.
#[derive(Debug)]
struct DynamicCert {
    material: Arc<dyn TlsMaterial>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesClientCert for DynamicCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let (chain, key) = self.material.client_cert()?;
        CertifiedKey::from_der(chain, key, &self.provider)
            .map(Arc::new)
            .map_err(|e| tracing::warn!(error = %e, "the client certificate for NATS is unusable"))
            .ok()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the server as WebPKI does (chain to the roots, the name in the URL), with the
/// roots read from the material at each handshake (a trust bundle can change).
#[derive(Debug)]
struct DynamicRoots {
    material: Arc<dyn TlsMaterial>,
    provider: Arc<CryptoProvider>,
}

impl DynamicRoots {
    fn verifier(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let mut store = rustls::RootCertStore::empty();
        for r in self.material.roots() {
            store
                .add(r)
                .map_err(|e| rustls::Error::General(format!("a NATS root: {e}")))?;
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("NATS roots: {e}")))
    }
}

impl ServerCertVerifier for DynamicRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls configuration for NATS connections.
pub fn tls_config(material: Arc<dyn TlsMaterial>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DynamicRoots {
            material: material.clone(),
            provider: provider.clone(),
        }))
        .with_client_cert_resolver(Arc::new(DynamicCert { material, provider }));
    Ok(cfg)
}

/// Parses server URLs (`tls://host:port`, `nats://host:port`, `host:port`).
pub fn servers(urls: &[String]) -> Result<Vec<ServerAddr>, String> {
    if urls.is_empty() {
        return Err("no NATS server given".into());
    }
    urls.iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| format!("NATS server {u:?}: {e}"))
        })
        .collect()
}

/// Reconnect delay after `attempts` failures: 100 ms doubling to 5 s.
pub fn backoff(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.min(6)).unwrap_or(6);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(Duration::from_secs(5))
}

/// Connect options: TLS required, retried from the first connect and forever after, every
/// connection event sent to `events`.
pub fn options(
    material: Arc<dyn TlsMaterial>,
    name: &str,
    events: mpsc::UnboundedSender<Event>,
) -> Result<ConnectOptions, String> {
    Ok(ConnectOptions::new()
        .name(name)
        .require_tls(true)
        .tls_client_config(tls_config(material)?)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(backoff)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .event_callback(move |e| {
            let events = events.clone();
            async move {
                let _ = events.send(e);
            }
        }))
}
