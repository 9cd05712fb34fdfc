//! `warden inject -f FILE`: adds the Warden sidecar to the workloads in Kubernetes manifests
//! and writes the result to stdout.
//!
//! Why it works document by document on the source text: a document that needs no change
//! is copied byte for byte (comments and all), so only the workloads that gain a sidecar
//! are re-written, and re-written by [`emit`] so that Kubernetes' YAML 1.1 reader sees the
//! same types as in the input. It must never write partial output (all documents are
//! processed before the first byte goes out), never change a document of another kind, and
//! never give a different result for already injected input.

mod capture;
mod containers;
mod emit;
mod help;
mod probes;
mod settings;
mod webhook;
mod workload;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde_yaml_ng::Value;

pub(crate) use help::LONG_ABOUT;
pub use workload::WorkloadError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest file to read, or `-` for stdin.
    #[arg(
        long,
        short = 'f',
        value_name = "FILE",
        required_unless_present = "serve",
        conflicts_with = "serve"
    )]
    file: Option<PathBuf>,
    /// The image of the injected `warden` container.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    image: String,
    /// The image of the `warden-init` container: `warden` plus iptables (the Dockerfile's
    /// `init` target). Default: --image with `-init` added to its repository name
    /// (`ghcr.io/warden-mesh/warden:0.1.0` -> `ghcr.io/warden-mesh/warden-init:0.1.0`).
    #[arg(long, value_name = "IMAGE")]
    init_image: Option<String>,
    /// Trust domain of the generated sidecar config (capture mode without
    /// warden.dev/config-map).
    #[arg(long, value_name = "TD")]
    trust_domain: Option<String>,
    /// `[policy] control_plane` of the generated sidecar config (https://host:port).
    #[arg(long, value_name = "URL")]
    control_plane: Option<String>,
    /// `[policy] control_plane_id` of the generated sidecar config (default:
    /// spiffe://<trust domain>/warden/control-plane).
    #[arg(long, value_name = "SPIFFE_ID", requires = "control_plane")]
    control_plane_id: Option<String>,
    /// Run the mutating admission webhook instead: HTTPS, POST /inject, AdmissionReview v1.
    #[arg(long, requires = "tls_dir")]
    serve: bool,
    /// The webhook's address (with --serve); port 0 picks a free port. The bound address
    /// is printed to stderr as "listening on ADDR".
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:9443",
        requires = "serve"
    )]
    listen: SocketAddr,
    /// Directory with the webhook's tls.crt and tls.key (PEM; with --serve). Re-read when
    /// they change.
    #[arg(long, value_name = "DIR", requires = "serve")]
    tls_dir: Option<PathBuf>,
}

impl Args {
    /// A long-running webhook (it logs at info), rather than a one-shot command.
    pub(crate) fn serves(&self) -> bool {
        self.serve
    }
}

pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/warden-mesh/warden:", env!("CARGO_PKG_VERSION"));

/// What the injector needs besides the manifest. The same for the CLI and the webhook.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub image: String,
    /// `warden-init`'s image; `None`: [`Options::image`].
    pub init_image: Option<String>,
    /// For a generated sidecar config; checked by [`Options::from_args`].
    pub trust_domain: Option<String>,
    pub control_plane: Option<String>,
    pub control_plane_id: Option<String>,
}

impl Options {
    /// Checks the flags that go into generated configs, so that a mistake is reported
    /// once, naming the flag, and not for every pod.
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let opts = Self {
            image: args.image.clone(),
            init_image: args.init_image.clone(),
            trust_domain: args.trust_domain.clone(),
            control_plane: args.control_plane.clone(),
            control_plane_id: args.control_plane_id.clone(),
        };
        capture::check_flags(&opts).map_err(anyhow::Error::msg)?;
        Ok(opts)
    }
}

/// The injected text, and what the user should know about it (warnings, not errors).
#[derive(Debug)]
pub struct Injected {
    pub text: String,
    pub warnings: Vec<String>,
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

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let opts = Options::from_args(args)?;
    if args.serve {
        let Some(dir) = &args.tls_dir else {
            anyhow::bail!("--serve needs --tls-dir");
        };
        return webhook::serve(args.listen, dir, opts).await;
    }
    let Some(file) = &args.file else {
        anyhow::bail!("-f FILE is required (or --serve)");
    };
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from stdin")?;
    } else {
        text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let out = inject_text(&text, &opts).map_err(anyhow::Error::new)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    Ok(())
}

/// Injects into one Pod given as JSON (the admission webhook's object): the same pod the
/// CLI makes of it, as JSON.
pub fn inject_pod_json(
    pod: &serde_json::Value,
    opts: &Options,
) -> Result<(serde_json::Value, Vec<String>), String> {
    let mut yaml: Value =
        serde_yaml_ng::to_value(pod).map_err(|e| format!("the pod cannot be read: {e}"))?;
    let mut warnings = Vec::new();
    workload::inject_object(&mut yaml, opts, "", &mut warnings).map_err(|e| e.to_string())?;
    let json =
        serde_json::to_value(&yaml).map_err(|e| format!("the pod cannot be written: {e}"))?;
    Ok((json, warnings))
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
pub fn inject_text(text: &str, opts: &Options) -> Result<Injected, InjectError> {
    let mut out = String::with_capacity(text.len() * 2);
    let mut warnings = Vec::new();
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
        let mut notes = Vec::new();
        workload::inject_object(&mut injected, opts, "", &mut notes).map_err(|error| {
            InjectError::Workload {
                doc,
                start: chunk.start_line,
                error,
            }
        })?;
        warnings.extend(notes.into_iter().map(|n| {
            format!(
                "document {doc} (starting at line {}): {n}",
                chunk.start_line
            )
        }));
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
    Ok(Injected {
        text: out,
        warnings,
    })
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
