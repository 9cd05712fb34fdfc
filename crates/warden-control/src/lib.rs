//! Warden's control plane: the policy API (gRPC over mTLS 1.3) with a durable, audited store
//! that pushes each workload's policy live to its sidecars; API authorization by the caller's
//! SPIFFE ID; and, for clusters without SPIRE, a built-in CA that serves the SPIFFE Workload
//! API on Unix sockets.
//!
//! It must never accept a write from a non-admin identity, never let a sidecar watch another
//! workload's policy (the caller is named by its certificate, never by a request field), and
//! never acknowledge a write before it is durable.
#![forbid(unsafe_code)]

/// `AsyncWrite` for a connection wrapper that changes only how it is read: every write goes
/// to the wrapped stream in field `$field`. (The read-side wrappers: `transport::MtlsConn`,
/// `grpc_limits::IdleClose`, `h2_authority::AuthorityFix`.)
macro_rules! delegate_async_write {
    ($ty:ident $(<$param:ident>)?, $field:ident) => {
        impl$(<$param: tokio::io::AsyncWrite + Unpin>)? tokio::io::AsyncWrite for $ty$(<$param>)? {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write(cx, data)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }
        }
    };
}

pub mod admin;
pub mod audit;
pub mod ca;
pub mod ca_source;
pub mod config;
pub mod etcd;
mod fanout;
pub mod grpc_limits;
mod h2_authority;
pub mod insight;
pub mod metrics;
pub mod policy_service;
pub mod quarantine;
pub mod server;
pub mod store;
pub mod transport;
pub mod workload_api;

pub use config::{
    CaConfig, ControlIdentity, ControlLimits, ControlPlaneConfig, WorkloadRegistration,
};
