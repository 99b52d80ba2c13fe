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
