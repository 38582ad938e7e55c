//! Atomic file writes: temp file in the destination directory, then rename.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::SpxError;

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_in(path: &Path) -> Result<tempfile::NamedTempFile, SpxError> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    // Keep the extension last: some writers (the PNG encoder) pick the format from it.
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(&format!(".part{ext}"))
        // tempfile's default 0600 would make results unreadable to collaborators.
        .permissions(world_readable())
        .tempfile_in(&dir)
        .map_err(|e| SpxError::io(&dir, e))
}

#[cfg(unix)]
fn world_readable() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o644)
}

#[cfg(not(unix))]
fn world_readable() -> std::fs::Permissions {
    std::fs::metadata(".")
        .map(|m| m.permissions())
        .expect("cwd metadata")
}

/// Create `dir` (and parents) if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), SpxError> {
    std::fs::create_dir_all(dir).map_err(|e| SpxError::io(dir, e))
}

/// Write `path` through a buffered writer. If `write` fails, nothing is left behind and an
/// existing file at `path` is untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<(), SpxError>
where
    F: FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
{
    let tmp = temp_in(path)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w).map_err(|e| SpxError::io(path, e))?;
        w.flush().map_err(|e| SpxError::io(path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| SpxError::io(path, e))?;
    tmp.persist(path).map_err(|e| SpxError::io(path, e.error))?;
    Ok(())
}

/// For libraries that create the file themselves (cfitsio, HDF5): `write` gets a fresh path that
/// does not exist yet, in the destination directory; on success it is renamed to `path`, on
/// error it is removed.
pub fn with_atomic_path<T, F>(path: &Path, write: F) -> Result<T, SpxError>
where
    F: FnOnce(&Path) -> Result<T, SpxError>,
{
    let tmp = temp_in(path)?.into_temp_path();
    // The writer wants to create the file itself; the TempPath guard still removes whatever it
    // leaves there if we return early.
    std::fs::remove_file(&tmp).map_err(|e| SpxError::io(&*tmp, e))?;
    let out = write(&tmp)?;
    tmp.persist(path).map_err(|e| SpxError::io(path, e.error))?;
    Ok(out)
}
