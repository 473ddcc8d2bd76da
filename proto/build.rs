//! Generates the Rust code for `proto/sandpool/v1` with protox (pure Rust, so
//! no system `protoc` is needed) and writes the encoded descriptor set that the
//! reflection service serves.

use std::{env, fs, io, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "sandpool/v1/pool.proto",
    "sandpool/v1/session.proto",
    "sandpool/v1/artifact.proto",
    "sandpool/v1/errors.proto",
];

fn main() -> io::Result<()> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(io::Error::other)?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&root]).map_err(|e| io::Error::other(e.to_string()))?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    fs::write(out_dir.join("sandpool_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Payloads (code, output, file chunks) stay `Bytes`: passed on without copies.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}
