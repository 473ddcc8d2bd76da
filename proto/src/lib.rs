//! The sandpool gRPC contract: Rust code generated from `proto/sandpool/v1`
//! and the encoded descriptor set for the reflection service.

/// Package `sandpool.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("sandpool.v1");
}

/// Encoded `FileDescriptorSet` of every sandpool proto (and its imports), for
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sandpool_descriptor");
