//! Generates the tonic/prost code for `aisle.v1` and the encoded file descriptor set served by gRPC reflection.
//!
//! The `.proto` files are parsed by `protox`, a protobuf compiler written in Rust that carries the Google
//! well-known types (`google/protobuf/timestamp.proto`, ...) inside it. The build therefore needs neither `protoc`
//! nor a system include path such as `/usr/include/google/protobuf` (Debian's `libprotobuf-dev`).

use std::{env, fs, path::PathBuf};

/// Our `.proto` files, relative to this crate's root, which is also the only include path.
const PROTOS: [&str; 5] = [
    "aisle/v1/decision.proto",
    "aisle/v1/edge.proto",
    "aisle/v1/associate.proto",
    "aisle/v1/admin.proto",
    "aisle/v1/internal.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // The same descriptor set `protoc --include_imports --include_source_info` writes: every file in dependency
    // order, the imported well-known types included (reflection clients need them to resolve `Timestamp`), and
    // source info so the generated code keeps the `.proto` comments as doc comments.
    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;

    // Rebuild when any file read from disk changes, imports included; the well-known types have no path.
    for file in compiler.files() {
        if let Some(path) = file.path() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }

    fs::write(
        out_dir.join("aisle_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // `compile_protos` adds this allow on its own; `compile_fds` does not, so it is asked for to keep the
    // generated code the same.
    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
