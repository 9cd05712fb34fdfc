//! Warden's control plane: the policy API (gRPC over mTLS 1.3) with a durable, audited store
//! that pushes each workload's policy live to its sidecars; API authorization by the caller's
//! SPIFFE ID; and, for clusters without SPIRE, a built-in CA that serves the SPIFFE Workload
//! API on Unix sockets.
//!
//! It must never accept a write from a non-admin identity, never let a sidecar watch another
//! workload's policy (the caller is named by its certificate, never by a request field), and
//! never acknowledge a write before it is durable.
#![forbid(unsafe_code)]

pub mod ca;
pub mod ca_source;
pub mod config;
pub mod grpc_limits;
mod h2_authority;
pub mod policy_service;
pub mod server;
pub mod store;
pub mod transport;
pub mod workload_api;

pub use config::{
    CaConfig, ControlIdentity, ControlLimits, ControlPlaneConfig, WorkloadRegistration,
};
