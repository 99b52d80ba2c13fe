//! Peer verification: the chain must reach a root of the bundle for the leaf's own trust
//! domain, and the leaf must obey the X509-SVID rules (`ringmesh_core::svid`). A client
//! verifier additionally carries the one SPIFFE ID the server must have.

use std::sync::Arc;

use ringmesh_core::SpiffeId;
use ringmesh_core::svid::{self, Role, SvidError, TrustBundles};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// A valid SVID for another SPIFFE ID than the endpoint must have.
#[derive(Debug, thiserror::Error)]
#[error("the upstream presented {got}; this endpoint must be {want}")]
pub(crate) struct IdentityMismatch {
    pub got: SpiffeId,
    pub want: SpiffeId,
}

#[derive(Debug)]
pub(super) struct PeerVerifier {
    pub bundles: TrustBundles,
    pub algs: WebPkiSupportedAlgorithms,
    /// Outbound: the SPIFFE ID the server must present.
    pub expect: Option<SpiffeId>,
}

fn rustls_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(match e {
        SvidError::Expired => CertificateError::Expired,
        SvidError::NotYetValid => CertificateError::NotValidYet,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

impl PeerVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<SpiffeId, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let got = svid::verify(&chain, &self.bundles, now, role).map_err(rustls_error)?;
        match &self.expect {
            Some(want) if *want != got => Err(rustls::Error::InvalidCertificate(
                CertificateError::Other(rustls::OtherError(Arc::new(IdentityMismatch {
                    got,
                    want: want.clone(),
                }))),
            )),
            _ => Ok(got),
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, Role::Server)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// rustls's two verifier traits force the same signature methods on both; they delegate to
// the same functions.
impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, Role::Client)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The peer's SPIFFE ID after a handshake (its certificate was verified by then).
pub(crate) fn peer_id(conn: &rustls::Connection) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    svid::inspect_leaf(leaf).ok().map(|l| l.id)
}
