//! Concord's wire protocol: the generated `concord.v1` messages, the `Coordinator` and
//! `Participant` service stubs, the encoded file descriptor set for gRPC reflection, the one
//! place where wire types convert to and from the core's domain types ([`convert`]), and the
//! transport settings every Concord server and channel shares ([`net`]), and the replaceable wall
//! clock the servers read ([`clock`]).

pub mod clock;
pub mod convert;
pub mod net;

/// Generated code for `package concord.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
pub mod v1 {
    tonic::include_proto!("concord.v1");
}

/// The encoded `FileDescriptorSet` of every Concord proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));
