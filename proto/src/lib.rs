//! Aisle's gRPC API, package `aisle.v1`.
//!
//! The `.proto` files under `aisle/v1/` are the contract with storefronts, handhelds and operators' tooling; this
//! crate holds the code `tonic-prost-build` generates from them and the encoded file descriptor set that gRPC server
//! reflection serves (so grpcurl, grpcui and Postman can discover the services).

#![forbid(unsafe_code)]

/// Generated types and service stubs of `aisle.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("aisle.v1");
}

/// The encoded `FileDescriptorSet` of every `aisle.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aisle_descriptor");

pub use prost_types::Timestamp;
