//! `jwks_file`: read at start, then polled every second. A change is detected by content (a
//! file rewritten in place within the same second, or swapped by a symlink rename, is
//! seen); each distinct content is parsed once, so a bad file is reported once, not every
//! second.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use warden_jwt::{Jwks, MAX_JWKS_BYTES};

use super::{JwksSet, Reporter, kids};

pub(super) const POLL: Duration = Duration::from_secs(1);

/// The file's bytes (at most [`MAX_JWKS_BYTES`]) and their fingerprint.
fn read(path: &PathBuf) -> Result<(u64, Vec<u8>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    // One byte more than allowed, to tell "too large" from "exactly the limit".
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    // Change detection only, never stored or logged: a non-cryptographic hash is enough.
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Ok((h.finish(), bytes))
}

/// Reads and parses the file once (off the async threads).
pub(super) async fn load(path: PathBuf) -> Result<(u64, Jwks), String> {
    tokio::task::spawn_blocking(move || {
        let (fingerprint, bytes) = read(&path)?;
        let set = Jwks::from_json(&bytes).map_err(|e| e.to_string())?;
        Ok((fingerprint, set))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Polls `path` and swaps each new valid content into `keys`.
pub(super) async fn poll(path: PathBuf, keys: Arc<JwksSet>, mut last: u64, report: Reporter) {
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the file was just loaded
    loop {
        tick.tick().await;
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || read(&p))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let bytes = match read {
            Ok((fingerprint, _)) if fingerprint == last => continue,
            Ok((fingerprint, bytes)) => {
                last = fingerprint;
                last_error = None;
                bytes
            }
            Err(reason) => {
                // A file being replaced may be briefly missing; say so once per cause.
                if last_error.as_deref() != Some(reason.as_str()) {
                    report.unavailable(&path.display().to_string(), &reason);
                    last_error = Some(reason);
                }
                continue;
            }
        };
        match Jwks::from_json(&bytes) {
            Ok(set) => {
                report.loaded(&path.display().to_string(), &kids(&set), set.skipped());
                keys.store(Arc::new(set));
            }
            Err(e) => report.invalid(&path.display().to_string(), &e.to_string()),
        }
    }
}
