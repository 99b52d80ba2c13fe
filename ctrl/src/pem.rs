//! PEM encoding (RFC 7468) of DER objects, for writing bundles and SVIDs to files.

/// `-----BEGIN {label}-----`, the base64 of `der` in 64-column lines, `-----END {label}-----`.
pub fn encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                B64[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_pem_reader() {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        for len in [0usize, 1, 2, 3, 47, 48, 49, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let pem = encode("CERTIFICATE", &der);
            assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
            if len > 0 {
                let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
                assert_eq!(back.as_ref(), der.as_slice(), "len {len}");
            }
        }
        assert_eq!(
            encode("X", b"Man"),
            "-----BEGIN X-----\nTWFu\n-----END X-----\n"
        );
        assert_eq!(
            encode("X", b"Ma"),
            "-----BEGIN X-----\nTWE=\n-----END X-----\n"
        );
    }
}
