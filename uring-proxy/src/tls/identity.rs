//! One workload's SVID, ready for handshakes: a server configuration, and client
//! configurations made per expected peer identity (cached per worker).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use ringmesh_core::SpiffeId;
use ringmesh_core::decide::MeshProtocol;
use ringmesh_core::svid::Identity;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use super::verify::PeerVerifier;

/// The name given to rustls for outbound connections; it is not checked (the peer's SPIFFE
/// ID is) and SNI is off, so it never leaves the proxy.
const SERVER_NAME: &str = "ringmesh.mesh";

/// An identity, ready for handshakes: the SVID, its server configuration, and what every
/// client configuration shares.
pub struct TlsIdentity {
    pub identity: Identity,
    server: Arc<rustls::ServerConfig>,
    provider: Arc<CryptoProvider>,
    client_cert: Arc<dyn ResolvesClientCert>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn alpn() -> Vec<Vec<u8>> {
    MeshProtocol::ALL
        .iter()
        .map(|p| p.alpn().to_vec())
        .collect()
}

impl TlsIdentity {
    pub fn new(identity: Identity) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PeerVerifier {
            bundles: identity.bundles.clone(),
            algs: provider.signature_verification_algorithms,
            expect: None,
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
        server.alpn_protocols = alpn();
        // No resumption is used (rustls would not re-verify the peer's chain on a resumed
        // session), so no tickets are minted either.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let key =
            CertifiedKey::from_der(identity.chain.clone(), identity.key.clone_key(), &provider)?;
        Ok(Self {
            identity,
            server: Arc::new(server),
            client_cert: Arc::new(SingleCertAndKey::from(key)),
            provider,
        })
    }

    /// A client configuration that accepts only a server proving `expect`.
    pub fn client_config(
        &self,
        expect: &SpiffeId,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let verifier = Arc::new(PeerVerifier {
            bundles: self.identity.bundles.clone(),
            algs: self.provider.signature_verification_algorithms,
            expect: Some(expect.clone()),
        });
        let mut client = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.client_cert.clone());
        client.alpn_protocols = vec![MeshProtocol::Ringmesh.alpn().to_vec()];
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_sni = false;
        Ok(Arc::new(client))
    }

    /// The server side of a mesh handshake.
    pub fn server_connection(&self) -> Result<rustls::Connection, rustls::Error> {
        rustls::ServerConnection::new(self.server.clone()).map(unlimited)
    }

    /// Whether the server configuration mints session tickets (it must not).
    pub fn sends_tickets(&self) -> bool {
        self.server.send_tls13_tickets > 0
    }
}

/// The client side of a mesh handshake under `config`.
pub(crate) fn client_connection(
    config: Arc<rustls::ClientConfig>,
) -> Result<rustls::Connection, rustls::Error> {
    let name = ServerName::try_from(SERVER_NAME)
        .map_err(|_| rustls::Error::General("server name".into()))?;
    rustls::ClientConnection::new(config, name).map(unlimited)
}

/// rustls caps what it buffers for sending (64 KiB by default) and a write past the cap is
/// short. The copy never seals more until what it sealed is flushed, so the buffer is bounded
/// by one read already; the cap is lifted so a full read is always taken whole.
fn unlimited(conn: impl Into<rustls::Connection>) -> rustls::Connection {
    let mut conn = conn.into();
    conn.set_buffer_limit(None);
    conn
}

/// Entries a worker keeps before it starts over.
const CLIENT_CONFIGS_MAX: usize = 1024;

/// A worker's client configurations, one per (workload, expected peer identity), made when
/// first needed and dropped when the workload's SVID rotates. Building one costs an `Arc`
/// and a verifier, not a key parse; caching saves even that per connection.
#[derive(Debug, Default)]
pub(crate) struct ClientConfigs {
    /// By workload index, then by expected identity (looked up by reference: no allocation
    /// per connection once cached).
    by_workload: RefCell<Vec<HashMap<SpiffeId, Cached>>>,
}

#[derive(Debug)]
struct Cached {
    /// The identity the configuration was made from (kept alive so its address stays
    /// unique while the entry exists).
    from: Arc<TlsIdentity>,
    config: Arc<rustls::ClientConfig>,
}

impl ClientConfigs {
    /// A client connection from `workload`'s identity to a server that must prove `expect`.
    pub(crate) fn connect(
        &self,
        workload: usize,
        identity: &Arc<TlsIdentity>,
        expect: &SpiffeId,
    ) -> Result<rustls::Connection, rustls::Error> {
        let mut all = self.by_workload.borrow_mut();
        if all.len() <= workload {
            all.resize_with(workload + 1, HashMap::new);
        }
        let map = &mut all[workload];
        let config = match map.get(expect) {
            Some(c) if Arc::ptr_eq(&c.from, identity) => c.config.clone(),
            _ => {
                if map.len() >= CLIENT_CONFIGS_MAX {
                    map.clear();
                }
                let config = identity.client_config(expect)?;
                map.insert(
                    expect.clone(),
                    Cached {
                        from: identity.clone(),
                        config: config.clone(),
                    },
                );
                config
            }
        };
        drop(all);
        client_connection(config)
    }
}
