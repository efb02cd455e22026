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

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::FileDescriptorSet;

    use super::FILE_DESCRIPTOR_SET;

    /// Reflection clients resolve every service and type from this set alone: it must hold our five files, their
    /// services, and the well-known `Timestamp` they import.
    #[test]
    fn descriptor_set_holds_services_and_imports() {
        let set = decoded_set();
        let names: Vec<&str> = set.file.iter().map(|file| file.name()).collect();
        for expected in [
            "google/protobuf/timestamp.proto",
            "aisle/v1/decision.proto",
            "aisle/v1/associate.proto",
            "aisle/v1/admin.proto",
            "aisle/v1/internal.proto",
            "aisle/v1/edge.proto",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }

        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                file.service
                    .iter()
                    .map(move |service| format!("{}.{}", file.package(), service.name()))
            })
            .collect();
        for expected in [
            "aisle.v1.DecisionService",
            "aisle.v1.AssociateService",
            "aisle.v1.AdminService",
            "aisle.v1.PeerService",
            "aisle.v1.EdgeService",
        ] {
            assert!(
                services.iter().any(|service| service == expected),
                "{expected} missing from {services:?}"
            );
        }

        let decision = set
            .file
            .iter()
            .find(|file| file.name() == "aisle/v1/decision.proto")
            .expect("decision.proto is in the set");
        assert!(
            decision
                .dependency
                .iter()
                .any(|dependency| dependency == "google/protobuf/timestamp.proto"),
            "decision.proto imports {:?}",
            decision.dependency
        );
    }

    /// Files come in dependency order, as `protoc --include_imports` writes them: a reflection client may register
    /// them one by one.
    #[test]
    fn descriptor_set_lists_imports_before_importers() {
        let set = decoded_set();
        for (index, file) in set.file.iter().enumerate() {
            for dependency in &file.dependency {
                let position = set
                    .file
                    .iter()
                    .position(|other| other.name() == dependency)
                    .unwrap_or_else(|| {
                        panic!("{} imports {dependency}, which is missing", file.name())
                    });
                assert!(
                    position < index,
                    "{} comes before its import {dependency}",
                    file.name()
                );
            }
        }
    }

    /// Our own files keep their source info, so reflection clients show the `.proto` comments.
    #[test]
    fn descriptor_set_keeps_comments() {
        let set = decoded_set();
        let decision = set
            .file
            .iter()
            .find(|file| file.name() == "aisle/v1/decision.proto")
            .expect("decision.proto is in the set");
        let info = decision
            .source_code_info
            .as_ref()
            .expect("source info kept");
        assert!(
            info.location
                .iter()
                .any(|location| location.leading_comments.is_some())
        );
    }

    fn decoded_set() -> FileDescriptorSet {
        FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes")
    }
}
