//! The health port: what the kubelet (or any prober outside the pod) may reach on the pod's
//! own address, with no client certificate.
//!
//! It serves `/ready`, `/live` and `/metrics` (for a Prometheus that scrapes pod IPs), and
//! `/app-health/<container>/<probe>`: the app's own HTTP, HTTPS or TCP probes, which
//! `meshctl inject` rewrote to point here. The kubelet cannot present a mesh identity, so in
//! strict mode its probes of the app port would be refused at the inbound listener; here the
//! sidecar makes each probe itself, to the app on loopback, and answers with its outcome. The
//! admin port (`/config`, `/identity`) stays on loopback: nothing here reveals more than the
//! metrics do.
//!
//! The probes come from `--app-probes` (env `RINGMESH_APP_PROBES`), a JSON object from path to
//! a Kubernetes probe handler with numeric ports:
//! `{"/app-health/web/readiness": {"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 1}}`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::admin::{self, TEXT};
use crate::state::Shared;

/// The app probes the health port answers for, by path.
#[derive(Debug, Default)]
pub struct AppProbes {
    probes: HashMap<String, AppProbe>,
}

/// One probe, as in a Kubernetes container spec (only the handlers that reach the app over the
/// network: `exec` runs inside the app's container and needs no help; `grpc` is refused when
/// parsed, so that a probe is never silently turned into something else).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppProbe {
    #[serde(default)]
    http_get: Option<HttpGet>,
    #[serde(default)]
    tcp_socket: Option<TcpSocket>,
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpGet {
    #[serde(default = "default_path")]
    path: String,
    port: u16,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    scheme: Scheme,
    #[serde(default)]
    http_headers: Vec<Header>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
enum Scheme {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpSocket {
    port: u16,
    #[serde(default)]
    host: Option<String>,
}

fn default_timeout() -> u64 {
    1
}

fn default_path() -> String {
    "/".into()
}

/// Path prefix of the rewritten app probes.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

impl AppProbes {
    /// Parses `--app-probes`; every error names the probe it is about.
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| format!("--app-probes is not a JSON object: {e}"))?;
        let mut probes = HashMap::with_capacity(raw.len());
        for (path, v) in raw {
            if !path.starts_with(APP_HEALTH_PREFIX) {
                return Err(format!(
                    "--app-probes: {path:?} does not start with {APP_HEALTH_PREFIX}"
                ));
            }
            let p: AppProbe =
                serde_json::from_value(v).map_err(|e| format!("--app-probes {path}: {e}"))?;
            match (&p.http_get, &p.tcp_socket) {
                (Some(h), None) => {
                    if !h.path.starts_with('/') {
                        return Err(format!(
                            "--app-probes {path}: httpGet.path must start with /"
                        ));
                    }
                    for hd in &h.http_headers {
                        HeaderName::from_bytes(hd.name.as_bytes()).map_err(|_| {
                            format!("--app-probes {path}: bad header name {:?}", hd.name)
                        })?;
                        HeaderValue::from_str(&hd.value).map_err(|_| {
                            format!("--app-probes {path}: bad value for header {}", hd.name)
                        })?;
                    }
                    target(h.host.as_deref(), h.port)
                        .map_err(|e| format!("--app-probes {path}: {e}"))?;
                }
                (None, Some(t)) => {
                    target(t.host.as_deref(), t.port)
                        .map_err(|e| format!("--app-probes {path}: {e}"))?;
                }
                _ => {
                    return Err(format!(
                        "--app-probes {path}: needs exactly one of httpGet, tcpSocket"
                    ));
                }
            }
            if p.timeout_seconds == 0 || p.timeout_seconds > 3600 {
                return Err(format!(
                    "--app-probes {path}: timeoutSeconds must be 1..=3600"
                ));
            }
            probes.insert(path, p);
        }
        Ok(Self { probes })
    }

    pub fn len(&self) -> usize {
        self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }
}

/// Where a probe goes: the app on loopback, unless the probe names an IP address of its own.
/// A host name is refused: resolving it would put DNS on the probe path.
fn target(host: Option<&str>, port: u16) -> Result<SocketAddr, String> {
    let ip = match host {
        None | Some("") | Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("host {h:?} is not an IP address"))?,
    };
    if port == 0 {
        return Err("port 0".into());
    }
    Ok(SocketAddr::new(ip, port))
}

pub(crate) async fn handle(
    req: &Request<Incoming>,
    shared: &Shared,
    probes: &AppProbes,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return admin::respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    let path = req.uri().path();
    match path {
        "/ready" | "/live" | "/metrics" => return admin::handle(req, shared),
        _ => {}
    }
    let Some(probe) = probes.probes.get(path) else {
        return admin::respond(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /ready /live /metrics or a configured /app-health/ path\n",
        );
    };
    let timeout = Duration::from_secs(probe.timeout_seconds);
    let outcome = tokio::time::timeout(timeout, run(probe)).await;
    match outcome {
        Ok(Ok(status)) if (200..400).contains(&status) => {
            admin::respond(StatusCode::OK, TEXT, format!("app answered {status}\n"))
        }
        // The app's own failure status passes through, so the kubelet's events show it.
        Ok(Ok(status)) => admin::respond(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            TEXT,
            format!("app answered {status}\n"),
        ),
        Ok(Err(e)) => admin::respond(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("probe failed: {e}\n"),
        ),
        Err(_) => admin::respond(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("probe timed out after {}s\n", probe.timeout_seconds),
        ),
    }
}

/// Makes the probe; an HTTP probe's answer is its status, a TCP probe's is 200 when the
/// connection opened.
async fn run(probe: &AppProbe) -> Result<u16, String> {
    if let Some(t) = &probe.tcp_socket {
        let addr = target(t.host.as_deref(), t.port)?;
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        return Ok(200);
    }
    let Some(h) = &probe.http_get else {
        return Err("no handler".into());
    };
    let addr = target(h.host.as_deref(), h.port)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut req = Request::get(h.path.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let headers = req.headers_mut();
    // The kubelet's own defaults, which a header in the probe replaces.
    headers.insert(USER_AGENT, HeaderValue::from_static("kube-probe/ringmesh"));
    if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
        headers.insert(HOST, v);
    }
    for hd in &h.http_headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(hd.name.as_bytes()),
            HeaderValue::from_str(&hd.value),
        ) {
            headers.insert(n, v);
        }
    }
    match h.scheme {
        Scheme::Http => send(TokioIo::new(tcp), req).await,
        Scheme::Https => {
            let tls = tls_connector()
                .connect(server_name(addr.ip()), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            send(TokioIo::new(tls), req).await
        }
    }
}

async fn send<T>(io: T, req: Request<Empty<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    let status = match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            // Read (and drop) a bounded body so the app sees a complete exchange.
            let _ = tokio::time::timeout(Duration::from_millis(200), r.into_body().collect()).await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    conn.abort();
    status
}

fn server_name(ip: IpAddr) -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::IpAddress(ip.into())
}

/// HTTPS probes verify nothing about the app's certificate, as the kubelet's do not: the
/// probe asks whether the app answers, not who it is. Signatures are still checked, so the
/// handshake is a real one.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(AnyServerCert(provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
                // The ring provider supports the default versions; this cannot happen, and
                // if it did every HTTPS probe would fail its handshake, visibly.
                Err(e) => {
                    tracing::error!(error = %e, "HTTPS probe client unavailable");
                    tokio_rustls::TlsConnector::from(Arc::new(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    ))
                }
            }
        })
        .clone()
}

#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shape_inject_writes() {
        let p = AppProbes::parse(
            r#"{"/app-health/web/readiness": {"httpGet": {"path": "/healthz", "port": 8080,
                 "scheme": "HTTPS", "httpHeaders": [{"name": "X-A", "value": "b"}]}, "timeoutSeconds": 3},
                "/app-health/web/liveness": {"tcpSocket": {"port": 8080}}}"#,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        let r = &p.probes["/app-health/web/readiness"];
        assert_eq!(r.timeout_seconds, 3);
        assert_eq!(r.http_get.as_ref().unwrap().scheme, Scheme::Https);
        assert_eq!(p.probes["/app-health/web/liveness"].timeout_seconds, 1);
    }

    #[test]
    fn refuses_what_it_cannot_probe_faithfully() {
        for (bad, why) in [
            (r#"[]"#, "not a JSON object"),
            (
                r#"{"/x": {"tcpSocket": {"port": 1}}}"#,
                "does not start with",
            ),
            (
                r#"{"/app-health/a/b": {"grpc": {"port": 1}}}"#,
                "unknown field",
            ),
            (r#"{"/app-health/a/b": {}}"#, "exactly one"),
            (
                r#"{"/app-health/a/b": {"httpGet": {"port": "http"}}}"#,
                "invalid type",
            ),
            (
                r#"{"/app-health/a/b": {"httpGet": {"port": 80, "host": "example.com"}}}"#,
                "not an IP",
            ),
            (
                r#"{"/app-health/a/b": {"tcpSocket": {"port": 80}, "timeoutSeconds": 0}}"#,
                "timeoutSeconds",
            ),
            (
                r#"{"/app-health/a/b": {"httpGet": {"port": 80, "httpHeaders": [{"name": "a b", "value": "c"}]}}}"#,
                "bad header",
            ),
        ] {
            let e = AppProbes::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
