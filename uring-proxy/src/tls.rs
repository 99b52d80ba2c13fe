//! Mutual TLS between proxies, with X509-SVIDs.
//!
//! rustls (ring provider, TLS 1.3 only, no session resumption: every connection proves its
//! identity afresh) is driven by the same loop as the plaintext copy: readiness from the
//! runtime, then non-blocking `recv`/`send` on the raw socket through `read_tls`/`write_tls`.
//! Peers are verified by `ringmesh_core::svid`: the chain must reach the trust bundle of the
//! leaf's own trust domain and the leaf must obey the X509-SVID rules. Which SPIFFE ID a peer
//! must have (outbound) or may have (inbound, the access policy) is checked by the pipeline
//! right after the handshake, before any application byte moves.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use ringmesh_core::SpiffeId;
use ringmesh_core::metrics::Side;
use ringmesh_core::svid::{self, Identity, Role, SvidError, TrustBundles};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::copy::{self, BUF_SIZE, CopyCx, CopyEnd};
use crate::sys;

/// The ALPN protocol that marks mesh traffic between proxies.
pub const ALPN: &[u8] = b"ringmesh";

/// The name given to rustls for outbound connections; it is not checked (the peer's SPIFFE
/// ID is) and SNI is off, so it never leaves the proxy.
const SERVER_NAME: &str = "ringmesh.mesh";

/// An identity, ready for handshakes: the SVID and its rustls configurations.
pub struct TlsIdentity {
    pub identity: Identity,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    pub fn new(identity: Identity) -> Result<Self, rustls::Error> {
        let provider = provider();
        let verifier = Arc::new(PeerVerifier {
            bundles: identity.bundles.clone(),
            algs: provider.signature_verification_algorithms,
        });
        let key = identity.key.clone_key();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(identity.chain.clone(), key)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_sni = false;
        Ok(Self {
            identity,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    pub fn client_connection(&self) -> Result<rustls::Connection, rustls::Error> {
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|_| rustls::Error::General("server name".into()))?;
        rustls::ClientConnection::new(self.client.clone(), name).map(unlimited)
    }

    pub fn server_connection(&self) -> Result<rustls::Connection, rustls::Error> {
        rustls::ServerConnection::new(self.server.clone()).map(unlimited)
    }
}

/// rustls caps what it buffers for sending (64 KiB by default) and a write past the cap is
/// short. The copy never seals more until what it sealed is flushed, so the buffer is bounded
/// by one read already; the cap is lifted so a full read is always taken whole.
fn unlimited(conn: impl Into<rustls::Connection>) -> rustls::Connection {
    let mut conn = conn.into();
    conn.set_buffer_limit(None);
    conn
}

/// Verifies peers as X509-SVIDs against the trust bundles, in both directions.
#[derive(Debug)]
struct PeerVerifier {
    bundles: TrustBundles,
    algs: WebPkiSupportedAlgorithms,
}

fn rustls_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(match e {
        SvidError::Expired => CertificateError::Expired,
        SvidError::NotYetValid => CertificateError::NotValidYet,
        SvidError::Untrusted { .. } | SvidError::UnknownTrustDomain(_) => {
            CertificateError::Other(rustls::OtherError(Arc::new(e)))
        }
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
        svid::verify(&chain, &self.bundles, now, role).map_err(rustls_error)
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

/// The raw socket as rustls's transport: non-blocking reads and writes.
struct Fd(RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.0, buf)
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection during the handshake")]
    Eof,
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// Writes out what rustls has queued; `Ok(false)` if the socket is full.
fn flush(conn: &mut rustls::Connection, fd: RawFd) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut Fd(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Runs the handshake on `sock` within `timeout`; returns how long it took.
pub(crate) async fn handshake(
    conn: &mut rustls::Connection,
    sock: &TcpStream,
    timeout: Duration,
) -> Result<Duration, HandshakeError> {
    let start = Instant::now();
    match monoio::time::timeout(timeout, drive_handshake(conn, sock)).await {
        Ok(r) => r.map(|()| start.elapsed()),
        Err(_) => Err(HandshakeError::Timeout(timeout)),
    }
}

async fn drive_handshake(
    conn: &mut rustls::Connection,
    sock: &TcpStream,
) -> Result<(), HandshakeError> {
    let fd = sock.as_raw_fd();
    loop {
        if !flush(conn, fd)? {
            sock.writable(false).await?;
            continue;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        match conn.read_tls(&mut Fd(fd)) {
            Ok(0) => return Err(HandshakeError::Eof),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // Tell the peer why (the alert rustls queued), then give up.
                    let _ = flush(conn, fd);
                    return Err(e.into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.readable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The peer's SPIFFE ID after a handshake (its certificate was verified by then).
pub(crate) fn peer_id(conn: &rustls::Connection) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    svid::inspect_leaf(leaf).ok().map(|l| l.id)
}

/// Peeks at the first byte of a new inbound connection: `Some(true)` for a TLS record
/// (0x16, handshake), `Some(false)` for anything else, `None` if the peer closed without a
/// byte. Waits at most `wait` for the peer to speak; a peer that does not (a server-first
/// protocol) is plaintext.
pub(crate) async fn sniff(sock: &TcpStream, wait: Duration) -> io::Result<Option<bool>> {
    let fd = sock.as_raw_fd();
    let deadline = Instant::now() + wait;
    loop {
        let mut first = [0u8; 1];
        match sys::peek(fd, &mut first) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(first[0] == 0x16)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero()
            || monoio::time::timeout(left, sock.readable(false))
                .await
                .is_err()
        {
            return Ok(Some(false));
        }
    }
}

/// What a TLS direction waits for.
enum Wait {
    Readable(RawFd),
    Writable(RawFd),
    Eof,
}

struct TlsFlow<'a> {
    conn: &'a RefCell<rustls::Connection>,
    tls: RawFd,
    plain: RawFd,
    pools: &'a copy::Pools,
    /// Plaintext out of rustls not yet written to the plain side: `[start, end)` of a buffer.
    pending: Option<(Box<[u8]>, usize, usize)>,
    /// close_notify is queued (the plain side ended); what is left is flushing it.
    closing: bool,
}

impl Drop for TlsFlow<'_> {
    fn drop(&mut self) {
        if let Some((buf, ..)) = self.pending.take() {
            self.pools.put_buf(buf);
        }
    }
}

/// Errors name the socket: `Upstream` here means the TLS socket, `Downstream` the plain one.
type FlowError = (Side, io::Error);

impl TlsFlow<'_> {
    /// Plaintext side to TLS side.
    fn seal(&mut self, moved: &mut impl FnMut(usize)) -> Result<Wait, FlowError> {
        loop {
            // Whatever rustls holds goes out first; read no more until it has.
            let flushed =
                flush(&mut self.conn.borrow_mut(), self.tls).map_err(|e| (Side::Upstream, e))?;
            if !flushed {
                return Ok(Wait::Writable(self.tls));
            }
            if self.closing {
                return Ok(Wait::Eof);
            }
            let mut buf = self.pools.take_buf();
            let r = sys::recv(self.plain, &mut buf);
            let outcome = match r {
                Ok(0) => {
                    self.pools.put_buf(buf);
                    self.conn.borrow_mut().send_close_notify();
                    // The next pass flushes it, then ends.
                    self.closing = true;
                    continue;
                }
                Ok(n) => {
                    moved(n);
                    let written = self.conn.borrow_mut().writer().write_all(&buf[..n]);
                    self.pools.put_buf(buf);
                    written.map_err(|e| (Side::Upstream, e))?;
                    n < BUF_SIZE
                }
                Err(e) => {
                    self.pools.put_buf(buf);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(Wait::Readable(self.plain)),
                        io::ErrorKind::Interrupted => false,
                        _ => return Err((Side::Downstream, e)),
                    }
                }
            };
            if outcome {
                // A short read: flush what was sealed, then wait for more plaintext.
                let flushed = flush(&mut self.conn.borrow_mut(), self.tls)
                    .map_err(|e| (Side::Upstream, e))?;
                return Ok(if flushed {
                    Wait::Readable(self.plain)
                } else {
                    Wait::Writable(self.tls)
                });
            }
        }
    }

    /// TLS side to plaintext side.
    fn open(&mut self, moved: &mut impl FnMut(usize)) -> Result<Wait, FlowError> {
        loop {
            // Plaintext already out of rustls goes to the plain side first.
            if let Some((buf, start, end)) = &mut self.pending {
                while start < end {
                    match sys::send(self.plain, &buf[*start..*end]) {
                        Ok(n) => *start += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Wait::Writable(self.plain));
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err((Side::Downstream, e)),
                    }
                }
                if let Some((buf, ..)) = self.pending.take() {
                    self.pools.put_buf(buf);
                }
            }
            let mut conn = self.conn.borrow_mut();
            let mut buf = self.pools.take_buf();
            match conn.reader().read(&mut buf) {
                Ok(0) => {
                    // close_notify: the peer's half-close.
                    self.pools.put_buf(buf);
                    return Ok(Wait::Eof);
                }
                Ok(n) => {
                    moved(n);
                    self.pending = Some((buf, 0, n));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pools.put_buf(buf),
                // The TCP stream ended without close_notify: treat as end of stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.pools.put_buf(buf);
                    return Ok(Wait::Eof);
                }
                Err(e) => {
                    self.pools.put_buf(buf);
                    return Err((Side::Upstream, e));
                }
            }
            // rustls needs more records.
            match conn.read_tls(&mut Fd(self.tls)) {
                Ok(0) => {
                    // Let rustls see the end; its reader then reports how it ended.
                    let _ = conn.process_new_packets();
                    if conn.reader().read(&mut []).is_err() {
                        return Ok(Wait::Eof);
                    }
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        let _ = flush(&mut conn, self.tls);
                        return Err((
                            Side::Upstream,
                            io::Error::new(io::ErrorKind::InvalidData, e),
                        ));
                    }
                    // Post-handshake messages may want a reply; send it if the socket takes it.
                    let _ = flush(&mut conn, self.tls);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Wait::Readable(self.tls));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((Side::Upstream, e)),
            }
        }
    }
}

/// Which of the two sockets speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsOn {
    Downstream,
    Upstream,
}

/// Copies both ways between a plaintext socket and a TLS one until both sides close, one
/// fails, the connection idles out, or `closing` completes. Half-closes map to close_notify
/// and back; a failure on either side resets the other.
pub(crate) async fn bidirectional(
    down: &TcpStream,
    up: &TcpStream,
    on: TlsOn,
    conn: rustls::Connection,
    cx: &CopyCx<'_>,
    closing: impl Future<Output = ()>,
) -> CopyEnd {
    let (tls_sock, plain_sock) = match on {
        TlsOn::Downstream => (down, up),
        TlsOn::Upstream => (up, down),
    };
    // Errors are reported against the real sides.
    let (tls_side, plain_side) = match on {
        TlsOn::Downstream => (Side::Downstream, Side::Upstream),
        TlsOn::Upstream => (Side::Upstream, Side::Downstream),
    };
    let conn = RefCell::new(conn);
    let flow = |pools| TlsFlow {
        conn: &conn,
        tls: tls_sock.as_raw_fd(),
        plain: plain_sock.as_raw_fd(),
        pools,
        pending: None,
        closing: false,
    };
    let sock_of = |fd: RawFd| {
        if fd == tls_sock.as_raw_fd() {
            tls_sock
        } else {
            plain_sock
        }
    };
    let side_of = |s: Side| {
        if s == Side::Upstream {
            tls_side
        } else {
            plain_side
        }
    };
    let from_plain = if on == TlsOn::Downstream {
        Side::Upstream
    } else {
        Side::Downstream
    };
    let from_tls = if on == TlsOn::Downstream {
        Side::Downstream
    } else {
        Side::Upstream
    };
    let mut seal = pin!(async {
        let mut f = flow(cx.pools);
        loop {
            let w = f.seal(&mut |n| {
                cx.idle.touch();
                cx.shard.bytes(cx.dir, from_plain, n as u64);
            });
            match w.map_err(|(s, e)| (side_of(s), e))? {
                Wait::Readable(fd) => sock_of(fd)
                    .readable(false)
                    .await
                    .map_err(|e| (side_of_fd(fd, tls_sock, tls_side, plain_side), e))?,
                Wait::Writable(fd) => sock_of(fd)
                    .writable(false)
                    .await
                    .map_err(|e| (side_of_fd(fd, tls_sock, tls_side, plain_side), e))?,
                Wait::Eof => break,
            }
        }
        // close_notify is out: end the TCP stream the same way.
        copy_shutdown(tls_sock).map_err(|e| (tls_side, e))
    });
    let mut open = pin!(async {
        let mut f = flow(cx.pools);
        loop {
            let w = f.open(&mut |n| {
                cx.idle.touch();
                cx.shard.bytes(cx.dir, from_tls, n as u64);
            });
            match w.map_err(|(s, e)| (side_of(s), e))? {
                Wait::Readable(fd) => sock_of(fd)
                    .readable(false)
                    .await
                    .map_err(|e| (side_of_fd(fd, tls_sock, tls_side, plain_side), e))?,
                Wait::Writable(fd) => sock_of(fd)
                    .writable(false)
                    .await
                    .map_err(|e| (side_of_fd(fd, tls_sock, tls_side, plain_side), e))?,
                Wait::Eof => break,
            }
        }
        copy_shutdown(plain_sock).map_err(|e| (plain_side, e))
    });
    let mut idle = pin!(cx.idle.expired());
    let mut closing = pin!(closing);
    let (mut seal_done, mut open_done) = (false, false);
    poll_fn(|task| {
        let failed = half(seal.as_mut(), &mut seal_done, task)
            .or_else(|| half(open.as_mut(), &mut open_done, task));
        if let Some((side, error)) = failed {
            copy::reset(if side == Side::Downstream { up } else { down });
            return Poll::Ready(CopyEnd::Failed { side, error });
        }
        if seal_done && open_done {
            return Poll::Ready(CopyEnd::Done);
        }
        if idle.as_mut().poll(task).is_ready() {
            return Poll::Ready(CopyEnd::Idle);
        }
        if closing.as_mut().poll(task).is_ready() {
            copy::reset(down);
            copy::reset(up);
            return Poll::Ready(CopyEnd::Closed);
        }
        Poll::Pending
    })
    .await
}

/// Polls one half unless it is done; returns its failure, if it failed.
fn half<F: Future<Output = Result<(), (Side, io::Error)>>>(
    fut: std::pin::Pin<&mut F>,
    done: &mut bool,
    task: &mut std::task::Context<'_>,
) -> Option<(Side, io::Error)> {
    if *done {
        return None;
    }
    match fut.poll(task) {
        Poll::Ready(Ok(())) => {
            *done = true;
            None
        }
        Poll::Ready(Err(e)) => Some(e),
        Poll::Pending => None,
    }
}

fn side_of_fd(fd: RawFd, tls_sock: &TcpStream, tls_side: Side, plain_side: Side) -> Side {
    if fd == tls_sock.as_raw_fd() {
        tls_side
    } else {
        plain_side
    }
}

fn copy_shutdown(s: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(&sys::fd_ref(s))
        .shutdown(std::net::Shutdown::Write)
        .or_else(copy::ignore_not_connected)
}
