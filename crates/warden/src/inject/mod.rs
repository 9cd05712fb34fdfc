//! `warden inject -f FILE`: adds the Warden sidecar to the workloads in Kubernetes manifests
//! and writes the result to stdout.
//!
//! Why it works document by document on the source text: a document that needs no change
//! is copied byte for byte (comments and all), so only the workloads that gain a sidecar
//! are re-written, and re-written by [`emit`] so that Kubernetes' YAML 1.1 reader sees the
//! same types as in the input. It must never write partial output (all documents are
//! processed before the first byte goes out), never change a document of another kind, and
//! never give a different result for already injected input.

mod emit;
mod workload;

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_yaml_ng::Value;

pub use workload::WorkloadError;

pub(crate) const LONG_ABOUT: &str = "\
Adds the Warden sidecar to the workloads in Kubernetes manifests and writes them to stdout.

Workloads: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob (spec.jobTemplate) and the items of a `kind: List`; a file may hold many documents.
Each pod gets: the `warden` container as a native sidecar (an init container with
restartPolicy: Always, so it starts before the app and does not keep a Job from finishing;
Kubernetes 1.29+), running `warden sidecar --config /etc/warden/sidecar.toml` as a non-root
user on a read-only root filesystem, with CPU/memory requests, startup/liveness probes on
/healthz and a readiness probe on /readyz of the metrics port (container port
`warden-metrics`), and SPIFFE_ENDPOINT_SOCKET set;
the volumes `warden-config` (the ConfigMap with key sidecar.toml), `warden-workload-api` (the
SPIFFE CSI driver csi.spiffe.io, read-only, at /spiffe-workload-api) and `warden-data`
(emptyDir for the policy cache); the annotation warden.dev/injected: \"true\", and
prometheus.io/scrape, /port (the metrics port), /path (/metrics) unless prometheus.io/scrape
is already set.

Pod template annotations (a bare Pod: its own):
  warden.dev/inject: \"false\"         leave this workload alone
  warden.dev/inbound-port: \"8443\"    the sidecar's inbound listener port, or \"none\"
  warden.dev/metrics-port: \"15020\"   the metrics-only listener: probes and Prometheus
  warden.dev/config-map: NAME         the ConfigMap holding sidecar.toml (default <workload name>-warden)
  warden.dev/admin-port               no longer accepted: refused with an error, because it
                                      named the port of the whole admin server on the pod IP;
                                      use warden.dev/metrics-port
The sidecar's TOML must agree: inbound listen 0.0.0.0:<inbound-port>, and under [admin]
metrics_listen = \"0.0.0.0:<metrics-port>\" (the kubelet and Prometheus reach the pod IP;
that listener serves only /metrics, /healthz and /readyz). Keep [admin] listen on loopback
(127.0.0.1:15000, the default): the debug views are not exposed by the pod, reach them with
`kubectl port-forward` or `kubectl exec`. That port is still taken in the pod's network
namespace, so the app must not use it.

What is preserved:
  - A document that needs no change is copied byte for byte, comments and layout included:
    documents of other kinds (and workload kinds of other API groups), opted-out
    workloads, already injected workloads given the same options, comment-only documents.
  - In a document that gains a sidecar, every key and value, the order of the keys in
    every mapping and the order of every list are kept; new keys go at the end of their
    mapping (a missing pod template `metadata` goes first). Comments, anchors and aliases
    (expanded), flow style (becomes block style), quoting and number spelling (0x1F becomes
    31) are not kept: scalars are re-quoted so that Kubernetes reads the same types.
    Input is read as YAML 1.2: an unquoted yes/no/on/off is kept as written.
  - Idempotent: running it on its own output gives the same output. A workload marked
    warden.dev/injected has its warden container and volumes re-rendered in place, so a
    new --image updates it and the same options change nothing. A prometheus.io/port that
    names a port of that earlier sidecar (such as warden-admin, the public admin port of
    earlier versions) is moved to the metrics port.

Refused, with a non-zero exit and nothing written: a YAML syntax error (the message names the
document and the line); a workload without containers; a container or volume named like
Warden's that warden inject did not add; a port clash with the app's containers.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest file to read, or `-` for stdin.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
    /// The image of the injected `warden` container.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    image: String,
}

pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/warden-mesh/warden:", env!("CARGO_PKG_VERSION"));

/// What the injector needs besides the manifest.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
}

/// Why a manifest was refused. Documents are numbered from 1 in file order, counting only
/// those holding a YAML node; lines are lines of the whole file.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc} (starting at line {start}): YAML syntax error: {message}")]
    Syntax {
        doc: usize,
        start: usize,
        message: String,
    },
    // The inner errors are named `error`, not `source`: their text is already in the
    // message, and as a `source` an error report would print it a second time.
    #[error("document {doc} (starting at line {start}): {error}")]
    Workload {
        doc: usize,
        start: usize,
        error: WorkloadError,
    },
    #[error("document {doc} (starting at line {start}): cannot write it back: {error}")]
    Emit {
        doc: usize,
        start: usize,
        error: emit::EmitError,
    },
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut text = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from stdin")?;
    } else {
        text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
    }
    let opts = Options {
        image: args.image.clone(),
    };
    let out = inject_text(&text, &opts).map_err(anyhow::Error::new)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    Ok(())
}

/// One document of the input: its text (from its `---` line, if any, up to the next one).
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line of the file where the chunk starts.
    start_line: usize,
    has_start_marker: bool,
    ends_with_end_marker: bool,
}

/// Splits at document markers. Per the YAML spec a `---` or `...` at the start of a line
/// always ends the current document, even inside a block or quoted scalar, so a line scan
/// finds the same boundaries as the parser.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let is_marker = |line: &str, m: &str| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    };
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut line_no, mut offset) = (0, 1, 1, 0);
    for line in text.split_inclusive('\n') {
        if is_marker(line, "---") && offset > start {
            chunks.push(chunk(text, start, offset, start_line));
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
        line_no += 1;
        if is_marker(line, "...") {
            chunks.push(chunk(text, start, offset, start_line));
            start = offset;
            start_line = line_no;
        }
    }
    if offset > start {
        chunks.push(chunk(text, start, offset, start_line));
    }
    chunks
}

fn chunk(text: &str, from: usize, to: usize, start_line: usize) -> Chunk<'_> {
    let t = &text[from..to];
    Chunk {
        text: t,
        start_line,
        has_start_marker: t.starts_with("---"),
        ends_with_end_marker: t
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_end() == "..."),
    }
}

/// Injects into every workload of a multi-document manifest.
pub fn inject_text(text: &str, opts: &Options) -> Result<String, InjectError> {
    let mut out = String::with_capacity(text.len() * 2);
    let mut doc = 0;
    for chunk in split_documents(text) {
        let original: Value = match serde_yaml_ng::from_str(chunk.text) {
            Ok(v) => v,
            Err(_) => {
                doc += 1;
                // Parse again with the lines before this document blanked, so the parser's
                // own message carries line numbers of the whole file.
                let padded = "\n".repeat(chunk.start_line - 1) + chunk.text;
                let message = match serde_yaml_ng::from_str::<Value>(&padded) {
                    Err(e) => e.to_string(),
                    Ok(_) => "cannot be parsed".to_owned(),
                };
                return Err(InjectError::Syntax {
                    doc,
                    start: chunk.start_line,
                    message,
                });
            }
        };
        if original.is_null() {
            out.push_str(chunk.text);
            continue;
        }
        doc += 1;
        let mut injected = original.clone();
        workload::inject_object(&mut injected, opts, "").map_err(|error| {
            InjectError::Workload {
                doc,
                start: chunk.start_line,
                error,
            }
        })?;
        if injected == original {
            out.push_str(chunk.text);
            continue;
        }
        let body =
            emit::document(&injected, &emit::SourceScalars::scan(chunk.text)).map_err(|error| {
                InjectError::Emit {
                    doc,
                    start: chunk.start_line,
                    error,
                }
            })?;
        if chunk.has_start_marker || !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&body);
        if chunk.ends_with_end_marker {
            out.push_str("...\n");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_only_at_line_start() {
        let text = "# header\na: 1\n---\nb: |\n  --- not a marker\n...\n--- # c\nc: 1\n";
        let chunks = split_documents(text);
        let texts: Vec<_> = chunks.iter().map(|c| c.text).collect();
        assert_eq!(
            texts,
            [
                "# header\na: 1\n",
                "---\nb: |\n  --- not a marker\n...\n",
                "--- # c\nc: 1\n"
            ]
        );
        assert_eq!(
            chunks.iter().map(|c| c.start_line).collect::<Vec<_>>(),
            [1, 3, 7]
        );
        assert!(chunks[1].ends_with_end_marker);
        assert_eq!(texts.concat(), text);
    }
}
