//! Compiles the eBPF programs in `bpf/` with clang (`-target bpf -O2 -g`, with BTF) into
//! `OUT_DIR`, where `src/udp.rs` embeds them. No prebuilt object is checked in: without clang
//! the build stops here and names the package to install.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from("bpf/udp.c");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=RINGMESH_CLANG");
    let clang = find_clang().unwrap_or_else(|| {
        panic!(
            "\n\nringmesh-redirect: no clang for the eBPF programs (bpf/udp.c).\n\
             Install Debian's clang and libbpf headers: apt-get install clang-19 libbpf-dev\n\
             (or set RINGMESH_CLANG to a clang that targets bpf). `.ci/deps.sh` does this.\n\n"
        )
    });
    if !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("\n\nringmesh-redirect: libbpf headers missing: apt-get install libbpf-dev\n\n");
    }
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let obj = out.join("udp.o");
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(
        status.success(),
        "{clang} failed to compile {}",
        src.display()
    );
}

fn find_clang() -> Option<String> {
    let candidates = std::env::var("RINGMESH_CLANG")
        .ok()
        .into_iter()
        .chain(["clang-19", "clang"].map(String::from));
    for c in candidates {
        let ok = Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(c);
        }
    }
    None
}
