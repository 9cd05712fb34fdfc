//! A watch on a key prefix that survives losing its member: it reconnects (to the next
//! member in turn) and resumes from the revision after the last event it delivered, so the
//! receiver sees every change once, in revision order, with no gap. Only a compaction past
//! that revision breaks the chain, and that is reported, never skipped over.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use warden_proto::etcd::etcdserverpb as rpc;
use warden_proto::etcd::etcdserverpb::watch_client::WatchClient;
use warden_proto::etcd::mvccpb::event::EventType;

use super::{Etcd, leader_request, prefix_end, status_text};

/// One change under the watched prefix. `revision` is the revision of the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        revision: i64,
    },
    Delete {
        key: Vec<u8>,
        revision: i64,
    },
}

/// Why a watch stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// etcd no longer has the revisions after the last one delivered.
    Compacted { next: i64, compacted_to: i64 },
}

enum Stop {
    /// The receiver is gone.
    Closed,
    Compacted(i64),
    /// Worth another try, on another member.
    Retry(String),
}

/// Watches every key starting with `prefix` from revision `start` (inclusive), forever.
pub fn watch_prefix(
    etcd: Arc<Etcd>,
    prefix: Vec<u8>,
    start: i64,
) -> mpsc::Receiver<Result<WatchEvent, WatchEnd>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut next = start;
        let mut failures: u32 = 0;
        loop {
            let delivered_before = next;
            match watch_once(&etcd, &prefix, &mut next, &tx).await {
                Stop::Closed => return,
                Stop::Compacted(compacted_to) => {
                    let _ = tx
                        .send(Err(WatchEnd::Compacted { next, compacted_to }))
                        .await;
                    return;
                }
                Stop::Retry(reason) => {
                    if next > delivered_before {
                        failures = 0;
                    }
                    failures = failures.saturating_add(1);
                    if failures <= 3 || failures.is_multiple_of(20) {
                        tracing::warn!(%reason, next_revision = next, "etcd watch interrupted; resuming on another member");
                    }
                }
            }
            // 100 ms, doubling up to 2 s: a member that is back is noticed quickly.
            let delay =
                Duration::from_millis(100u64 << failures.min(5)).min(Duration::from_secs(2));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

async fn watch_once(
    etcd: &Etcd,
    prefix: &[u8],
    next: &mut i64,
    tx: &mpsc::Sender<Result<WatchEvent, WatchEnd>>,
) -> Stop {
    let (url, channel) = match etcd.dedicated_channel().await {
        Ok(c) => c,
        Err(e) => return Stop::Retry(e.to_string()),
    };
    let (req_tx, req_rx) = mpsc::channel(4);
    let create = rpc::WatchRequest {
        request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
            rpc::WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision: *next,
                ..Default::default()
            },
        )),
    };
    if req_tx.send(create).await.is_err() {
        return Stop::Retry("request stream closed".into());
    }
    let opened = tokio::time::timeout(
        Duration::from_secs(3),
        WatchClient::new(channel).watch(leader_request(
            tokio_stream::wrappers::ReceiverStream::new(req_rx),
        )),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(status)) => return Stop::Retry(format!("{url}: {}", status_text(&status))),
        Err(_) => return Stop::Retry(format!("{url}: the watch did not open within 3s")),
    };
    loop {
        let resp = tokio::select! {
            r = stream.message() => r,
            _ = tx.closed() => return Stop::Closed,
        };
        let resp = match resp {
            Ok(Some(r)) => r,
            Ok(None) => return Stop::Retry(format!("{url}: the watch stream ended")),
            Err(status) => return Stop::Retry(format!("{url}: {}", status_text(&status))),
        };
        if resp.compact_revision > 0 && resp.compact_revision >= *next {
            return Stop::Compacted(resp.compact_revision);
        }
        if resp.canceled {
            return Stop::Retry(format!("{url}: watch canceled: {}", resp.cancel_reason));
        }
        for event in resp.events {
            let Some(kv) = event.kv else { continue };
            let revision = kv.mod_revision;
            let item = if event.r#type == EventType::Delete as i32 {
                WatchEvent::Delete {
                    key: kv.key,
                    revision,
                }
            } else {
                WatchEvent::Put {
                    key: kv.key,
                    value: kv.value,
                    revision,
                }
            };
            if tx.send(Ok(item)).await.is_err() {
                return Stop::Closed;
            }
            // Events of one revision may span responses only when fragmented, which is not
            // asked for: resuming after this revision loses nothing.
            *next = (*next).max(revision + 1);
        }
        // Keep the request side open: closing it ends the watch on etcd's side.
        let _ = &req_tx;
    }
}
