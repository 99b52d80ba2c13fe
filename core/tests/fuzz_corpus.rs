//! Replays the fuzzers' corpus (`fuzz/corpus/`) through the same checks as the fuzz targets,
//! so every input a fuzzer ever kept stays a regression test on stable Rust.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

use std::path::PathBuf;

use ringmesh_core::SpiffeId;
use ringmesh_core::config::{Config, Format};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus for {target}");
    out
}

#[test]
fn config_corpus() {
    let mut valid = 0;
    for (path, data) in corpus("config") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        for format in [Format::Yaml, Format::Json] {
            if let Ok(c) = Config::from_str(text, format) {
                valid += 1;
                let json = serde_json::to_string(c.raw()).unwrap();
                let back = Config::from_str(&json, Format::Json).unwrap();
                assert_eq!(back.raw(), c.raw(), "{}", path.display());
            }
        }
    }
    assert!(valid >= 3, "the seeds include valid configs");
}

#[test]
fn spiffe_id_corpus() {
    for (path, data) in corpus("spiffe_id") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(id) = SpiffeId::parse(text) {
            assert_eq!(id.to_string(), text, "{}", path.display());
        }
    }
}

#[test]
fn svid_leaf_corpus() {
    for (_, data) in corpus("svid_leaf") {
        let _ = ringmesh_core::svid::inspect_leaf(&data);
    }
}

#[test]
fn client_hello_corpus() {
    use ringmesh_core::client_hello::{MAX_CLIENT_HELLO, Parsed, parse};
    use ringmesh_core::decide::{Detected, MeshProtocol};
    let mut mesh = 0;
    for (path, data) in corpus("client_hello") {
        let mut scratch = Vec::new();
        let parsed = parse(&data, &mut scratch);
        let detected = Detected::from_parse(&parsed);
        let not_tls = parsed == Parsed::NotTls;
        assert!(scratch.len() <= 4 + MAX_CLIENT_HELLO, "{}", path.display());
        if detected == Some(Detected::Mesh(MeshProtocol::Ringmesh)) {
            mesh += 1;
        }
        if path.ends_with("plaintext") {
            assert!(not_tls);
        }
    }
    assert!(mesh >= 2, "the seeds include mesh hellos");
}

#[test]
fn proxy_v2_corpus() {
    use ringmesh_core::proxy_v2::{MAX_HEADER, Malformed, parse, write};
    let mut parsed = 0;
    for (path, data) in corpus("proxy_v2") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Seeds are named `<outcome>-<what>`: `valid`, or the reason they are refused.
        let expected = name.split_once('-').map(|(outcome, _)| outcome);
        match parse(&data) {
            Ok((header, payload)) => {
                parsed += 1;
                assert!(expected.is_none_or(|e| e == "valid"), "{name} parsed");
                let tail = &data[data.len() - payload.len()..];
                assert!(std::ptr::eq(tail.as_ptr(), payload.as_ptr()), "{name}");
                assert!(data.len() - payload.len() <= MAX_HEADER, "{name}");
                let framed: usize = header.tlvs.iter().map(|t| 3 + t.value.len()).sum();
                assert_eq!(framed, header.tlvs.as_bytes().len(), "{name}");
                if let Some(addrs) = header.addrs {
                    let mut buf = [0; MAX_HEADER];
                    let n = write(&addrs, &mut buf).unwrap();
                    let (again, rest) = parse(&buf[..n]).unwrap();
                    assert_eq!(again.addrs, Some(addrs), "{name}");
                    assert!(rest.is_empty(), "{name}");
                }
            }
            Err(reason) => {
                if let Some(e) =
                    expected.filter(|e| Malformed::ALL.iter().any(|m| m.as_str() == *e))
                {
                    assert_eq!(reason.as_str(), e, "{name}");
                } else {
                    assert_ne!(expected, Some("valid"), "{name}: {reason}");
                }
            }
        }
    }
    assert!(parsed >= 3, "the seeds include valid headers");
}
