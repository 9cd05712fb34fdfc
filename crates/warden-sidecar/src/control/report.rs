//! Edge reports to the control plane, over the policy watch stream.
//!
//! Every `report_interval` the counts of `edges.rs` are taken and handed to the watch
//! stream that is up at that moment, if any, with a non-blocking send. No stream (the
//! control plane is away, or between replicas) or a full stream queue: the report is
//! dropped and counted (`warden_edge_reports_total{result="dropped"}`). Nothing is queued
//! beyond the stream's own small buffer, and nothing here ever waits on the network, so a
//! missing control plane costs the data plane nothing but the counting itself.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use warden_proto::control::v1::{WatchRequest, watch_request};

use crate::edges::Edges;
use crate::metrics::EdgeReportResult;
use crate::telemetry::Telemetry;

/// What the report task needs, shared with the watch loop.
#[derive(Debug)]
pub struct Reporting {
    pub edges: Arc<Edges>,
    pub interval: Duration,
    /// The request side of the watch stream currently up.
    link: Mutex<Option<mpsc::Sender<WatchRequest>>>,
}

impl Reporting {
    pub fn new(edges: Arc<Edges>, interval: Duration) -> Self {
        Self {
            edges,
            interval,
            link: Mutex::new(None),
        }
    }

    fn link(&self) -> MutexGuard<'_, Option<mpsc::Sender<WatchRequest>>> {
        // A swap of an Option: nothing half done on a panic.
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch stream is up: reports go to it until the returned guard drops.
    pub(crate) fn connect(self: &Arc<Self>, tx: mpsc::Sender<WatchRequest>) -> Connected {
        *self.link() = Some(tx);
        Connected(self.clone())
    }

    /// Hands a report to the stream that is up; false if there is none or it is full.
    fn try_send(&self, msg: WatchRequest) -> bool {
        let link = self.link();
        link.as_ref().is_some_and(|tx| tx.try_send(msg).is_ok())
    }
}

/// Unlinks the watch stream when the watch ends, whichever way.
pub(crate) struct Connected(Arc<Reporting>);

impl Drop for Connected {
    fn drop(&mut self) {
        *self.0.link() = None;
    }
}

/// Runs until the sidecar stops: one report per interval, sent or dropped.
pub(crate) async fn report_loop(reporting: Arc<Reporting>, telemetry: Telemetry) {
    let mut tick = tokio::time::interval(reporting.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(report) = reporting.edges.take_report() else {
            continue;
        };
        let msg = WatchRequest {
            msg: Some(watch_request::Msg::EdgeReport(report)),
        };
        let result = if reporting.try_send(msg) {
            EdgeReportResult::Sent
        } else {
            EdgeReportResult::Dropped
        };
        telemetry.edge_report(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_stream_a_report_is_dropped_and_a_full_stream_never_blocks() {
        let reporting = Arc::new(Reporting::new(
            Arc::new(Edges::new(8)),
            Duration::from_secs(1),
        ));
        let msg = || WatchRequest { msg: None };
        assert!(!reporting.try_send(msg()), "sent with no stream up");
        let (tx, mut rx) = mpsc::channel(1);
        {
            let _up = reporting.connect(tx);
            assert!(reporting.try_send(msg()));
            // The queue holds one: the next is dropped at once, not waited for.
            assert!(!reporting.try_send(msg()));
            assert!(rx.try_recv().is_ok());
        }
        assert!(!reporting.try_send(msg()), "sent after the stream ended");
    }
}
