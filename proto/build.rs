//! Generates the tonic/prost code for `aisle.v1` and the encoded file descriptor set served by gRPC reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "aisle/v1/decision.proto",
        "aisle/v1/associate.proto",
        "aisle/v1/admin.proto",
        "aisle/v1/internal.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("aisle_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
