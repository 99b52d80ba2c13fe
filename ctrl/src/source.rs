//! Where the proxy's identity comes from, as a stream of events for the control thread:
//! the SPIFFE Workload API (the X.509 context stream of a SPIRE agent or of
//! `meshctl identity serve`), or PEM files re-read when they change. Every update is checked
//! (the SVID against the X509-SVID rules and its own bundle) before it is passed on; a bad
//! one is an error event and the last good identity stays in force.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use ringmesh_core::svid::{Identity, TrustBundles};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// What a source reports.
#[derive(Debug)]
pub enum SourceEvent {
    /// A new, checked identity (first one, or a rotation).
    Update(Box<Identity>),
    /// The source failed; it retries with backoff.
    Error(String),
}

pub(crate) fn unix_now() -> UnixTime {
    UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Backoff between reconnects: 100 ms doubling to 5 s, with up to 25% jitter so that many
/// proxies do not reconnect in step.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
    async fn wait(&mut self) {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let jitter = self.0.mul_f64(f64::from(nanos % 250) / 1000.0);
        tokio::time::sleep(self.0 + jitter).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// Follows the Workload API at `socket` forever: reconnects with backoff, reports each
/// X.509 context as an identity.
pub async fn workload_api(socket: PathBuf, mut on: impl FnMut(SourceEvent)) {
    let mut backoff = Backoff::new();
    loop {
        match follow(&socket, &mut on, &mut backoff).await {
            Ok(()) => on(SourceEvent::Error(
                "the Workload API closed the stream".into(),
            )),
            Err(e) => on(SourceEvent::Error(e)),
        }
        backoff.wait().await;
    }
}

async fn follow(
    socket: &Path,
    on: &mut impl FnMut(SourceEvent),
    backoff: &mut Backoff,
) -> Result<(), String> {
    let endpoint = format!("unix:{}", socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .map_err(|e| {
            format!(
                "connecting to the Workload API at {}: {e}",
                socket.display()
            )
        })?;
    let mut contexts = client
        .stream_x509_contexts()
        .await
        .map_err(|e| format!("Workload API X.509 stream: {e}"))?;
    while let Some(ctx) = contexts.next().await {
        let ctx = ctx.map_err(|e| format!("Workload API X.509 stream: {e}"))?;
        match identity_of(&ctx) {
            Ok(id) => {
                backoff.reset();
                on(SourceEvent::Update(Box::new(id)));
            }
            Err(e) => on(SourceEvent::Error(e)),
        }
    }
    Ok(())
}

fn identity_of(ctx: &spiffe::X509Context) -> Result<Identity, String> {
    let svid = ctx.default_svid().ok_or("the X.509 context has no SVID")?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(svid.private_key().as_bytes().to_vec().into());
    let mut bundles = TrustBundles::new();
    for (td, bundle) in ctx.bundle_set().iter() {
        let roots = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()));
        bundles.set(td.to_string(), roots.collect());
    }
    Identity::new(chain, key, bundles, unix_now()).map_err(|e| format!("SVID refused: {e}"))
}

/// Reads an identity from PEM files: the SVID chain (leaf first), its private key, and the
/// trust bundle of the SVID's trust domain.
pub fn read_files(cert: &Path, key: &Path, bundle: &Path) -> Result<Identity, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e:?}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("{}: no private key: {e:?}", key.display()))?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(bundle)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e:?}", bundle.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate", cert.display()))?;
    let info =
        ringmesh_core::svid::inspect_leaf(leaf).map_err(|e| format!("{}: {e}", cert.display()))?;
    let mut bundles = TrustBundles::new();
    bundles.set(info.id.trust_domain(), roots);
    Identity::new(chain, key_der, bundles, unix_now()).map_err(|e| format!("SVID refused: {e}"))
}

/// Watches PEM files: reports the identity at start and again whenever a file changes
/// (checked every `poll`).
pub async fn files(
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    poll: Duration,
    mut on: impl FnMut(SourceEvent),
) {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = None;
    loop {
        let now = (stamp(&cert), stamp(&key), stamp(&bundle));
        if seen.as_ref() != Some(&now) {
            seen = Some(now);
            on(match read_files(&cert, &key, &bundle) {
                Ok(id) => SourceEvent::Update(Box::new(id)),
                Err(e) => SourceEvent::Error(e),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Splits concatenated DER certificates (each an ASN.1 SEQUENCE), as the SPIFFE APIs send
/// bundles.
pub fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let bad = || "malformed DER certificate list".to_string();
        if bytes.first() != Some(&0x30) {
            return Err(bad());
        }
        let first = *bytes.get(1).ok_or_else(bad)?;
        let (header, len) = if first < 0x80 {
            (2, usize::from(first))
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(bad());
            }
            let len_bytes = bytes.get(2..2 + n).ok_or_else(bad)?;
            (
                2 + n,
                len_bytes
                    .iter()
                    .fold(0usize, |a, b| (a << 8) | usize::from(*b)),
            )
        };
        let total = header.checked_add(len).ok_or_else(bad)?;
        let cert = bytes.get(..total).ok_or_else(bad)?;
        out.push(CertificateDer::from(cert.to_vec()));
        bytes = &bytes[total..];
    }
    Ok(out)
}

/// Follows SPIRE's Delegated Identity API at `socket` (an agent's admin socket) for the
/// workload that `selectors` (each `type:value`) name: the trust bundles from one stream, the
/// SVIDs from the other, each new SVID checked against the bundles and reported. Reconnects
/// with backoff until `stop` completes.
pub async fn delegated(
    socket: PathBuf,
    selectors: Vec<String>,
    mut on: impl FnMut(SourceEvent),
    stop: impl std::future::Future<Output = ()>,
) {
    let mut backoff = Backoff::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = follow_delegated(&socket, &selectors, &mut on, &mut backoff) => match r {
                Ok(()) => on(SourceEvent::Error("the Delegated Identity API closed the stream".into())),
                Err(e) => on(SourceEvent::Error(e)),
            },
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = backoff.wait() => {}
        }
    }
}

/// A tonic channel over a unix socket.
async fn uds_channel(socket: &Path) -> Result<tonic::transport::Channel, String> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::1]:1")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))
}

async fn follow_delegated(
    socket: &Path,
    selectors: &[String],
    on: &mut impl FnMut(SourceEvent),
    backoff: &mut Backoff,
) -> Result<(), String> {
    use crate::delegated_pb as pb;
    let channel = uds_channel(socket).await?;
    let mut client = pb::delegated_identity_client::DelegatedIdentityClient::new(channel);
    let selectors = selectors
        .iter()
        .map(|s| match s.split_once(':') {
            Some((t, v)) => Ok(pb::Selector {
                r#type: t.to_string(),
                value: v.to_string(),
            }),
            None => Err(format!("selector {s:?} is not type:value")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut bundles_stream = client
        .subscribe_to_x509_bundles(pb::SubscribeToX509BundlesRequest {})
        .await
        .map_err(|e| format!("Delegated Identity API bundles: {}", e.message()))?
        .into_inner();
    let mut svids = client
        .subscribe_to_x509svi_ds(pb::SubscribeToX509sviDsRequest { selectors, pid: 0 })
        .await
        .map_err(|e| format!("Delegated Identity API SVIDs: {}", e.message()))?
        .into_inner();
    let mut bundles: Option<TrustBundles> = None;
    let mut svid: Option<pb::X509svidWithKey> = None;
    loop {
        tokio::select! {
            b = bundles_stream.next() => {
                let b = b.ok_or("the bundle stream ended")?.map_err(|e| format!("bundle stream: {}", e.message()))?;
                let mut set = TrustBundles::new();
                for (td, der) in &b.ca_certificates {
                    set.set(td.clone(), split_der(der)?);
                }
                bundles = Some(set);
            }
            s = svids.next() => {
                let s = s.ok_or("the SVID stream ended")?.map_err(|e| format!("SVID stream: {}", e.message()))?;
                svid = s.x509_svids.into_iter().next();
                if svid.is_none() {
                    on(SourceEvent::Error("the Delegated Identity API sent no SVID".into()));
                }
            }
        }
        if let (Some(b), Some(s)) = (&bundles, &svid) {
            let Some(x) = &s.x509_svid else { continue };
            let chain: Vec<CertificateDer<'static>> = x
                .cert_chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect();
            let key = PrivateKeyDer::Pkcs8(s.x509_svid_key.clone().into());
            match Identity::new(chain, key, b.clone(), unix_now()) {
                Ok(id) => {
                    backoff.reset();
                    on(SourceEvent::Update(Box::new(id)));
                }
                Err(e) => on(SourceEvent::Error(format!("SVID refused: {e}"))),
            }
            // Report each SVID once; a new bundle alone waits for the next SVID.
            svid = None;
        }
    }
}
