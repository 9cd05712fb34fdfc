//! Generated protobuf and gRPC code, nothing else: the SPIFFE Workload API (no proto package,
//! wire-compatible with SPIRE), Warden's control-plane API (`warden.control.v1`), and the
//! client side of etcd v3's KV and Watch (a vendored subset, `proto/etcd/`).
// Generated code is not ours to lint.
#![allow(clippy::all, clippy::pedantic)]
#![forbid(unsafe_code)]

/// The SPIFFE Workload API. The proto has no package, so prost emits it as `_`.
pub mod workload {
    tonic::include_proto!("_");
}

/// Warden control plane, v1.
pub mod control {
    pub mod v1 {
        tonic::include_proto!("warden.control.v1");
    }
}

/// etcd v3's KV and Watch services (client side), for the control plane's etcd store.
pub mod etcd {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}

/// Encoded `FileDescriptorSet` of every proto above, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
