//! A development identity service for in-process mTLS tests: the real `meshctl identity serve`
//! server (one CA), on two sockets whose callers get two identities, since both proxies run in
//! this one process with one uid.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ringmesh_core::SpiffeId;
use ringmesh_ctrl::ca::DevCa;
use ringmesh_ctrl::devserver::{self, DevServer, Mapping};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub const TD: &str = "example.org";
pub const CLIENT_ID: &str = "spiffe://example.org/ns/a/sa/client";
pub const SERVER_ID: &str = "spiffe://example.org/ns/b/sa/server";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The identity service; stopped on drop (or earlier with [`stop`](Self::stop)).
pub struct Identities {
    pub dir: PathBuf,
    pub server: Arc<DevServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Identities {
    pub fn start(ttl: Duration) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringmesh-mtls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let server = Arc::new(DevServer {
            ca: DevCa::generate(TD).unwrap(),
            trust_domain: TD.into(),
            ttl,
            mapping: Mapping::default(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (s, d) = (server.clone(), dir.clone());
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = devserver::bind(&d.join("client.sock")).unwrap();
                let server_sock = devserver::bind(&d.join("server.sock")).unwrap();
                bound_tx.send(()).unwrap();
                let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
                let (mut r1, mut r2) = (stop_tx.subscribe(), stop_tx.subscribe());
                let a = s.clone().serve(
                    client,
                    Some(SpiffeId::parse(CLIENT_ID).unwrap()),
                    async move {
                        let _ = r1.recv().await;
                    },
                );
                let b = s.serve(
                    server_sock,
                    Some(SpiffeId::parse(SERVER_ID).unwrap()),
                    async move {
                        let _ = r2.recv().await;
                    },
                );
                let stopper = async move {
                    let _ = rx.await;
                    let _ = stop_tx.send(());
                };
                let _ = tokio::join!(a, b, stopper);
            });
        });
        bound_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self {
            dir,
            server,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn socket(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.sock"))
    }

    /// Stops serving (the proxies keep what they have until it expires).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// An SVID from this CA for `id`, as a test client's credentials.
    pub fn mint(
        &self,
        id: &str,
        ttl: Duration,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let m = self
            .server
            .ca
            .mint(&SpiffeId::parse(id).unwrap(), ttl, SystemTime::now())
            .unwrap();
        (m.chain, PrivateKeyDer::Pkcs8(m.key.into()))
    }
}

impl Drop for Identities {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Accepts any server certificate and keeps it, so a test can look at what was presented.
#[derive(Debug, Default)]
pub struct Capture(pub std::sync::Mutex<Vec<CertificateDer<'static>>>);

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A blocking TLS client that presents `creds` (when given) and captures the server's
/// certificate: a stand-in for another proxy, or for an intruder.
pub fn tls_client(
    addr: SocketAddr,
    creds: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    Arc<Capture>,
) {
    let capture = Arc::new(Capture::default());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(capture.clone());
    let mut config = match creds {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"ringmesh".to_vec()];
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("ringmesh.mesh").unwrap(),
    )
    .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (rustls::StreamOwned::new(conn, sock), capture)
}

/// The serial of a certificate, as the proxy's metrics spell it.
pub fn serial(cert: &CertificateDer<'_>) -> String {
    ringmesh_core::svid::inspect_leaf(cert).unwrap().serial
}
