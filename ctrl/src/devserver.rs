//! A development SPIFFE Workload API server: the same gRPC service as a SPIRE agent, on a
//! unix socket, with its own CA. It identifies the caller by the socket's peer credentials
//! and maps the uid to a SPIFFE ID, mints that workload an SVID, and streams a fresh one at
//! half the TTL, so rotation happens all the time.
//!
//! For single-machine use and tests. It attests nothing beyond the peer's uid.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use ringmesh_core::SpiffeId;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::ca::DevCa;
use crate::pb;
use crate::pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// Which SPIFFE ID a caller gets.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub by_uid: HashMap<u32, SpiffeId>,
    /// For callers no rule names.
    pub default: Option<SpiffeId>,
}

impl Mapping {
    pub fn resolve(&self, uid: Option<u32>) -> Option<&SpiffeId> {
        uid.and_then(|u| self.by_uid.get(&u))
            .or(self.default.as_ref())
    }
}

/// The server's state: the CA, the TTL and the mapping.
#[derive(Debug)]
pub struct DevServer {
    pub ca: DevCa,
    pub trust_domain: String,
    pub ttl: Duration,
    pub mapping: Mapping,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gRPC service for one socket (a socket may carry its own default identity).
#[derive(Debug, Clone)]
struct Service {
    server: Arc<DevServer>,
    socket_default: Option<SpiffeId>,
    /// Becomes true on shutdown: every open stream ends, so the graceful shutdown can finish.
    stopping: watch::Receiver<bool>,
}

fn concat(certs: &[rustls_pki_types::CertificateDer<'static>]) -> Vec<u8> {
    certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

impl Service {
    /// SPIRE refuses requests without the `workload.spiffe.io: true` header (it keeps
    /// browsers and stray HTTP clients out); so do we.
    fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
        match req
            .metadata()
            .get("workload.spiffe.io")
            .and_then(|v| v.to_str().ok())
        {
            Some("true") => Ok(()),
            _ => Err(Status::invalid_argument(
                "security header missing from request",
            )),
        }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|c| c.peer_cred)
            .map(|c| c.uid());
        self.server
            .mapping
            .resolve(uid)
            .or(self.socket_default.as_ref())
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "no identity issued: no mapping for uid {}",
                    uid.map_or("unknown".into(), |u| u.to_string())
                ))
            })
    }

    fn svid_response(&self, id: &SpiffeId) -> Result<pb::X509svidResponse, Status> {
        let s = &self.server;
        let minted =
            s.ca.mint(id, s.ttl, SystemTime::now())
                .map_err(|e| Status::internal(format!("minting an SVID: {e}")))?;
        Ok(pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: id.to_string(),
                x509_svid: concat(&minted.chain),
                x509_svid_key: minted.key,
                bundle: concat(s.ca.bundle()),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        })
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = BoxStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Self::check_header(&req)?;
        let id = self.caller(&req)?;
        let first = self.svid_response(&id)?;
        tracing::info!(spiffe_id = %id, ttl = ?self.server.ttl, "issuing X509-SVIDs");
        let (tx, rx) = mpsc::channel(2);
        let mut me = self.clone();
        tokio::spawn(async move {
            let mut next = Ok(first);
            loop {
                if tx.send(next).await.is_err() {
                    return; // the workload went away
                }
                tokio::select! {
                    _ = tokio::time::sleep(me.server.ttl / 2) => {}
                    _ = me.stopping.wait_for(|s| *s) => return,
                }
                next = me.svid_response(&id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Self::check_header(&req)?;
        let bundles = HashMap::from([(
            self.server.trust_domain.clone(),
            concat(self.server.ca.bundle()),
        )]);
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            // The bundle never changes; keep the stream open until the client leaves.
            let _ = tx
                .send(Ok(pb::X509BundlesResponse {
                    crl: Vec::new(),
                    bundles,
                }))
                .await;
            tx.closed().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        Err(Status::unimplemented(
            "this development server issues X509-SVIDs only",
        ))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented(
            "this development server issues X509-SVIDs only",
        ))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented(
            "this development server issues X509-SVIDs only",
        ))
    }
}

/// Binds the socket (replacing a stale one), open to every local user as a SPIRE agent's is.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(l)
}

impl DevServer {
    /// Serves the Workload API on `listener` until `shutdown` completes. Callers no mapping
    /// names get `socket_default`, when given.
    pub async fn serve(
        self: Arc<Self>,
        listener: UnixListener,
        socket_default: Option<SpiffeId>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (stop_tx, stopping) = watch::channel(false);
        let svc = Service {
            server: self,
            socket_default,
            stopping,
        };
        let shutdown = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(svc))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await
    }
}

/// Where a socket path for tests and the demo would go.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/ringmesh/workload.sock")
}

/// Who may use the Delegated Identity API, and which workload each selector names.
#[derive(Debug, Clone, Default)]
pub struct Delegation {
    /// The uids of trusted node agents (a node proxy); everyone else is refused.
    pub uids: Vec<u32>,
    /// `type:value` selector -> the SPIFFE ID it names.
    pub selectors: HashMap<String, SpiffeId>,
    /// Selectors whose SVID is issued once and never renewed (to test expiry).
    pub no_rotate: Vec<String>,
}

/// The Delegated Identity API over the development CA.
#[derive(Debug, Clone)]
struct DelegatedService {
    server: Arc<DevServer>,
    delegation: Arc<Delegation>,
    stopping: watch::Receiver<bool>,
}

impl DelegatedService {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|c| c.peer_cred)
            .map(|c| c.uid());
        match uid {
            Some(u) if self.delegation.uids.contains(&u) => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "uid {} is not a trusted delegate (--delegate-uid)",
                uid.map_or("unknown".into(), |u| u.to_string())
            ))),
        }
    }

    fn svid(
        &self,
        id: &SpiffeId,
    ) -> Result<crate::delegated_pb::SubscribeToX509sviDsResponse, Status> {
        use crate::delegated_pb as d;
        let s = &self.server;
        let minted =
            s.ca.mint(id, s.ttl, SystemTime::now())
                .map_err(|e| Status::internal(format!("minting an SVID: {e}")))?;
        let expires_at = SystemTime::now()
            .checked_add(s.ttl)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        Ok(d::SubscribeToX509sviDsResponse {
            x509_svids: vec![d::X509svidWithKey {
                x509_svid: Some(d::X509svid {
                    id: Some(d::Spiffeid {
                        trust_domain: id.trust_domain().to_string(),
                        path: id.path().to_string(),
                    }),
                    cert_chain: minted.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
                    expires_at,
                    hint: String::new(),
                }),
                x509_svid_key: minted.key,
            }],
            federates_with: Vec::new(),
        })
    }
}

#[tonic::async_trait]
impl crate::delegated_pb::delegated_identity_server::DelegatedIdentity for DelegatedService {
    type SubscribeToX509SVIDsStream = BoxStream<crate::delegated_pb::SubscribeToX509sviDsResponse>;
    type SubscribeToX509BundlesStream =
        BoxStream<crate::delegated_pb::SubscribeToX509BundlesResponse>;

    async fn subscribe_to_x509svi_ds(
        &self,
        req: Request<crate::delegated_pb::SubscribeToX509sviDsRequest>,
    ) -> Result<Response<Self::SubscribeToX509SVIDsStream>, Status> {
        self.authorize(&req)?;
        let wanted: Vec<String> = req
            .get_ref()
            .selectors
            .iter()
            .map(|s| format!("{}:{}", s.r#type, s.value))
            .collect();
        let (selector, id) = wanted
            .iter()
            .find_map(|s| {
                self.delegation
                    .selectors
                    .get(s)
                    .map(|id| (s.clone(), id.clone()))
            })
            .ok_or_else(|| {
                Status::permission_denied(format!("no identity for selectors {wanted:?}"))
            })?;
        let rotate = !self.delegation.no_rotate.contains(&selector);
        let first = self.svid(&id)?;
        tracing::info!(spiffe_id = %id, %selector, rotate, "delegated X509-SVIDs");
        let (tx, rx) = mpsc::channel(2);
        let mut me = self.clone();
        tokio::spawn(async move {
            let mut next = Ok(first);
            loop {
                if tx.send(next).await.is_err() {
                    return;
                }
                if !rotate {
                    // One SVID, then silence until the subscriber leaves or we stop.
                    tokio::select! {
                        _ = tx.closed() => {}
                        _ = me.stopping.wait_for(|s| *s) => {}
                    }
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(me.server.ttl / 2) => {}
                    _ = me.stopping.wait_for(|s| *s) => return,
                }
                next = me.svid(&id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn subscribe_to_x509_bundles(
        &self,
        req: Request<crate::delegated_pb::SubscribeToX509BundlesRequest>,
    ) -> Result<Response<Self::SubscribeToX509BundlesStream>, Status> {
        self.authorize(&req)?;
        let bundles = HashMap::from([(
            self.server.trust_domain.clone(),
            concat(self.server.ca.bundle()),
        )]);
        let (tx, rx) = mpsc::channel(1);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(crate::delegated_pb::SubscribeToX509BundlesResponse {
                    ca_certificates: bundles,
                }))
                .await;
            tokio::select! {
                _ = tx.closed() => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl DevServer {
    /// Serves the Delegated Identity API on `listener` (an admin socket: bind it with
    /// [`bind_admin`]) until `shutdown` completes.
    pub async fn serve_delegated(
        self: Arc<Self>,
        listener: UnixListener,
        delegation: Delegation,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (stop_tx, stopping) = watch::channel(false);
        let svc = DelegatedService {
            server: self,
            delegation: Arc::new(delegation),
            stopping,
        };
        let shutdown = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tonic::transport::Server::builder()
            .add_service(
                crate::delegated_pb::delegated_identity_server::DelegatedIdentityServer::new(svc),
            )
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await
    }
}

/// Binds an admin socket (replacing a stale one), for its owner only: the Delegated Identity
/// API hands out other workloads' keys.
pub fn bind_admin(path: &Path) -> std::io::Result<UnixListener> {
    let l = bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
