//! Builds the resident runner (`src/sandbox/runner/bin.rs`, std only) with
//! rustc alone: a static binary that runs in any x86-64/arm64 Linux image,
//! carried inside the server (see `sandbox::runner`).

use std::{env, path::PathBuf, process::Command};

fn main() {
    let source = "src/sandbox/runner/bin.rs";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-changed=src/sandbox/runner/protocol.rs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-name",
            "sandpool_runner",
            "--crate-type",
            "bin",
            "--target",
            &target,
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(out.join("sandpool-runner"))
        .arg(source)
        .status()
        .expect("run rustc for the runner");
    assert!(
        status.success(),
        "building the resident runner failed (it needs the C library's static archive, libc6-dev)"
    );
}
