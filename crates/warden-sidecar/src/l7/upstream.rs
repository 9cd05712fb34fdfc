//! The app side of an HTTP connection: connections to the app opened on demand, over
//! loopback, as the app speaks (`app_protocol`).
//!
//! HTTP/1.1: a connection carries one request at a time, so an HTTP/2 client's concurrent
//! streams get connections of their own; idle ones are kept (up to [`MAX_IDLE`]) for the
//! next requests of the same client connection. h2c: one multiplexed connection, opened on
//! the first request and again after it fails. Everything ends with the client
//! connection that owns it.

use std::sync::Mutex;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::AppProtocol;

/// Idle HTTP/1.1 connections to the app kept per client connection.
const MAX_IDLE: usize = 8;

pub(crate) enum AppClient {
    Http1(Mutex<Vec<http1::SendRequest<Incoming>>>),
    H2c(tokio::sync::Mutex<Option<http2::SendRequest<Incoming>>>),
}

impl AppClient {
    pub(crate) fn new(protocol: AppProtocol) -> Self {
        match protocol {
            AppProtocol::Http1 => AppClient::Http1(Mutex::new(Vec::new())),
            AppProtocol::H2c => AppClient::H2c(tokio::sync::Mutex::new(None)),
        }
    }

    pub(crate) async fn send(
        &self,
        forward: &str,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        match self {
            AppClient::Http1(idle) => {
                let ready = {
                    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                    idle.retain(|s| !s.is_closed());
                    idle.iter()
                        .position(|s| s.is_ready())
                        .map(|i| idle.swap_remove(i))
                };
                let mut sender = match ready {
                    Some(s) => s,
                    None => {
                        let io = connect(forward).await?;
                        let (sender, conn) =
                            http1::handshake(io).await.map_err(|e| e.to_string())?;
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        sender
                    }
                };
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                // Back to the pool now: it is ready again once this response's body is
                // read, and `is_ready` says so to the next request.
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(sender);
                }
                Ok(resp)
            }
            AppClient::H2c(shared) => {
                let mut sender = {
                    let mut slot = shared.lock().await;
                    match slot.as_ref() {
                        Some(s) if !s.is_closed() => s.clone(),
                        _ => {
                            let io = connect(forward).await?;
                            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                                .await
                                .map_err(|e| e.to_string())?;
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                            *slot = Some(sender.clone());
                            sender
                        }
                    }
                };
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(req).await.map_err(|e| e.to_string())
            }
        }
    }
}

async fn connect(forward: &str) -> Result<TokioIo<TcpStream>, String> {
    let tcp = TcpStream::connect(forward)
        .await
        .map_err(|e| format!("connect {forward}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(TokioIo::new(tcp))
}
