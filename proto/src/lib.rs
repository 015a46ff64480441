//! Concord's wire protocol: the generated `concord.v1` messages, the `Coordinator` and
//! `Participant` service stubs, and the encoded file descriptor set for gRPC reflection.
//!
//! These types stay at the edges: the protocol core (`concord-core`) never sees them, and each
//! service converts them to domain types in one place.

/// Generated code for `package concord.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
pub mod v1 {
    tonic::include_proto!("concord.v1");
}

/// The encoded `FileDescriptorSet` of every Concord proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));
