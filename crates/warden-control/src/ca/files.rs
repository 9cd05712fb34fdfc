//! Writing private files: 0600, created fresh, flushed, renamed into place, so a reader (or a
//! crash) sees the old content or the new, never part of it, and never with loose permissions.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{CaError, io_err};

pub(super) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Writes `data` to `path` with mode 0600: a fresh temporary file beside it (never a reused
/// one with looser permissions), flushed to disk, then renamed over `path`.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CaError> {
    let tmp = write_temp(path, data).map_err(|(at, e)| io_err(&at)(e))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// The first half of writing a private file: `data` in a fresh temporary file beside `path`
/// (`.<name>.tmp-<pid>`, created new with mode 0600, never a reused one with looser
/// permissions), flushed to disk. The caller moves it into place (a rename over `path`, or
/// a hard link that fails if `path` exists) and removes it. On an error nothing is left,
/// and the error comes with the path it is about.
pub(super) fn write_temp(path: &Path, data: &[u8]) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err((tmp, e)),
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
    {
        Ok(file) => file,
        Err(e) => return Err((tmp, e)),
    };
    let written = file.write_all(data).and_then(|()| file.sync_all());
    drop(file);
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err((path.to_owned(), e))
        }
    }
}

/// Makes a rename durable. Best effort: some filesystems cannot fsync a directory, and the
/// data itself was already synced.
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
