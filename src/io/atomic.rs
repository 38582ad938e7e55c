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
    // The pid in the name lets a later run tell a killed run's leftovers from a live one's
    // (see [`clean_stale`]).
    tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", std::process::id()))
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

/// Content checksum of a file: `crc32:<8 hex digits>:<length>` (flate2's CRC-32, already a
/// dependency). It is for telling a torn, truncated or bit-flipped file from the one a
/// checkpoint recorded, not for resisting forgery.
pub fn file_checksum(path: &Path) -> Result<String, SpxError> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| SpxError::io(path, e))?;
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| SpxError::io(path, e))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        len += n as u64;
    }
    Ok(format!("crc32:{:08x}:{len}", crc.sum()))
}

/// A hidden, pid-tagged sibling of `dest` (`.NAME.WHAT.PID`).
fn dir_sibling(dest: &Path, what: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{what}.{}", std::process::id()))
}

/// Write the directory `dest` all or nothing: `write` fills a fresh hidden sibling directory,
/// which then replaces `dest` by renames only. A failure or a kill leaves the previous `dest`
/// complete (or, in the instant between the two renames, absent with both versions beside
/// it); never a mixture of old and new files.
pub fn write_dir_atomic<T>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<T, SpxError>,
) -> Result<T, SpxError> {
    let parent = parent_dir(dest);
    ensure_dir(&parent)?;
    let tmp = dir_sibling(dest, "new");
    let _ = std::fs::remove_dir_all(&tmp);
    ensure_dir(&tmp)?;
    let result = write(&tmp).and_then(|v| {
        if dest.exists() {
            let old = dir_sibling(dest, "old");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(dest, &old).map_err(|e| SpxError::io(dest, e))?;
            std::fs::rename(&tmp, dest).map_err(|e| SpxError::io(dest, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, dest).map_err(|e| SpxError::io(dest, e))?;
        }
        Ok(v)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Prefix of the staging directory a [`Stage`] creates inside the output directory.
const STAGE_PREFIX: &str = ".spx-stage.";

/// Whether process `pid` is alive (Linux: `/proc/<pid>` exists). Elsewhere every pid counts as
/// alive, so nothing is removed by pid there.
fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// The pid recorded in one of spx's own temporary names: `.NAME.PID.RANDOM.partEXT` (atomic
/// writes) or `.spx-stage.PID.RANDOM` (run staging). `None` for any other name.
fn spx_temp_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(STAGE_PREFIX) {
        return rest.split('.').next()?.parse().ok();
    }
    if !name.starts_with('.') {
        return None;
    }
    // `.NAME.new.PID` / `.NAME.old.PID`: directories being swapped by [`write_dir_atomic`].
    let mut parts = name.rsplit('.');
    if let (Some(pid), Some("new" | "old")) = (parts.next(), parts.next())
        && let Ok(pid) = pid.parse()
    {
        return Some(pid);
    }
    let stem = &name[..name.rfind(".part")?];
    let mut parts = stem.rsplit('.');
    let random = parts.next()?;
    let pid = parts.next()?;
    (random.len() == 6 && random.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Remove spx's own temporary files and staging directories in `dir` left by runs that are no
/// longer alive (killed, out of power). Returns the names removed. Other files are never touched.
pub fn clean_stale(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = spx_temp_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let ok = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p).is_ok(),
            Ok(_) => std::fs::remove_file(&p).is_ok(),
            Err(_) => false,
        };
        if ok {
            tracing::info!("removed stale {} of a dead spx run", p.display());
            removed.push(name);
        }
    }
    removed
}

/// A file-name component built from data (a property label, an instrument name): every
/// character outside `[A-Za-z0-9._-]` becomes `_`, and a leading `.` too, so it can neither
/// leave the output directory (`../x`, `/etc`) nor hide itself.
pub fn safe_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A user-given output file name (`--name`): one plain component, no directory part.
pub fn check_file_name(name: &str, flag: &str) -> Result<(), SpxError> {
    let p = Path::new(name);
    let mut comps = p.components();
    match (comps.next(), comps.next()) {
        (Some(std::path::Component::Normal(_)), None) if !name.contains(['/', '\\']) => Ok(()),
        _ => Err(SpxError::Config(format!(
            "{flag} `{name}`: must be a plain file name inside --out (no directory part, no `..`)"
        ))),
    }
}

/// (device, inode) of an existing file, to compare paths that may be spelled differently.
#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    let c = std::fs::canonicalize(p).ok()?;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    c.hash(&mut h);
    Some((0, h.finish()))
}

/// The outputs of one run, made visible together.
///
/// Everything a command writes goes under [`Stage::dir`], a hidden directory inside the output
/// directory; [`Stage::commit`] then renames every entry into place (same file system, so each
/// rename is atomic) after checking that none of them would replace one of the run's inputs.
/// A run that fails before `commit` leaves nothing in the output directory: the staging
/// directory is removed on drop, and a killed run's is removed by the next run
/// ([`clean_stale`]). Creating the stage is also the early "can we write there" test, so an
/// unwritable `--out` fails before any computation.
#[derive(Debug)]
pub struct Stage {
    out: PathBuf,
    tmp: Option<tempfile::TempDir>,
    inputs: Vec<(PathBuf, (u64, u64))>,
}

impl Stage {
    /// Create `out` if needed, remove dead runs' leftovers there, and open a staging directory.
    pub fn begin(out: &Path) -> Result<Stage, SpxError> {
        ensure_dir(out)?;
        clean_stale(out);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{STAGE_PREFIX}{}.", std::process::id()))
            .tempdir_in(out)
            .map_err(|e| SpxError::io(out, e))?;
        Ok(Stage {
            out: out.to_path_buf(),
            tmp: Some(tmp),
            inputs: Vec::new(),
        })
    }

    /// Inputs of the run: `commit` refuses to replace any of them, however spelled.
    pub fn inputs<'a>(mut self, paths: impl IntoIterator<Item = &'a Path>) -> Self {
        for p in paths {
            if let Some(id) = file_id(p) {
                self.inputs.push((p.to_path_buf(), id));
            }
        }
        self
    }

    /// Where the run writes its outputs (same relative names as in the output directory).
    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().expect("stage open until commit").path()
    }

    /// The final directory.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Final path of a staged path (for messages).
    pub fn final_path(&self, staged: &Path) -> PathBuf {
        match staged.strip_prefix(self.dir()) {
            Ok(rel) => self.out.join(rel),
            Err(_) => staged.to_path_buf(),
        }
    }

    fn staged_files(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), SpxError> {
        let rd = std::fs::read_dir(dir.join(rel)).map_err(|e| SpxError::io(dir.join(rel), e))?;
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                Self::staged_files(dir, &r, out)?;
            } else {
                out.push(r);
            }
        }
        Ok(())
    }

    /// Move every staged file into the output directory; returns their final paths.
    pub fn commit(mut self) -> Result<Vec<PathBuf>, SpxError> {
        let tmp = self.tmp.take().expect("commit once");
        let mut rels = Vec::new();
        Self::staged_files(tmp.path(), Path::new(""), &mut rels)?;
        for rel in &rels {
            let dest = self.out.join(rel);
            if let Some(id) = file_id(&dest)
                && let Some((input, _)) = self.inputs.iter().find(|(_, i)| *i == id)
            {
                return Err(SpxError::file(
                    &dest,
                    format!(
                        "refusing to write over the input {} (choose another --out)",
                        input.display()
                    ),
                ));
            }
        }
        let mut finals = Vec::with_capacity(rels.len());
        for rel in rels {
            let (src, dest) = (tmp.path().join(&rel), self.out.join(&rel));
            if let Some(parent) = dest.parent() {
                ensure_dir(parent)?;
            }
            std::fs::rename(&src, &dest).map_err(|e| SpxError::io(&dest, e))?;
            finals.push(dest);
        }
        // Best-effort fsync of the directory so the renames survive a power cut.
        if let Ok(d) = File::open(&self.out) {
            let _ = d.sync_all();
        }
        drop(tmp);
        Ok(finals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_pid_and_are_recognised() {
        let d = tempfile::tempdir().unwrap();
        let t = temp_in(&d.path().join("model.bpk")).unwrap();
        let name = t.path().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(spx_temp_pid(&name), Some(std::process::id()), "{name}");
        assert_eq!(spx_temp_pid(".x.y.12.ab12CD.part.npz"), Some(12));
        assert_eq!(spx_temp_pid(".spx-stage.77.Ab3x9q"), Some(77));
        assert_eq!(spx_temp_pid("model.part-1-of-4.fits"), None);
        assert_eq!(spx_temp_pid(".hidden"), None);
        assert_eq!(spx_temp_pid(".x.notapid.ab12CD.part"), None);
        assert_eq!(spx_temp_pid(".last.new.42"), Some(42));
        assert_eq!(spx_temp_pid(".step-0000002.old.7"), Some(7));
    }

    #[test]
    fn stale_files_of_dead_runs_are_removed_and_others_kept() {
        let d = tempfile::tempdir().unwrap();
        // pid 0 is never a user process: /proc/0 does not exist.
        let dead = d.path().join(".a.csv.0.AbCd12.part.csv");
        let mine = d
            .path()
            .join(format!(".b.csv.{}.AbCd12.part.csv", std::process::id()));
        let user = d.path().join(".user.part.txt");
        for p in [&dead, &mine, &user] {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::create_dir(d.path().join(".spx-stage.0.zzzzzz")).unwrap();
        let removed = clean_stale(d.path());
        if cfg!(target_os = "linux") {
            assert_eq!(removed.len(), 2, "{removed:?}");
            assert!(!dead.exists());
        }
        assert!(mine.exists() && user.exists());
    }

    #[test]
    fn stage_commits_together_and_leaves_nothing_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        {
            let s = Stage::begin(&out).unwrap();
            std::fs::write(s.dir().join("a.txt"), b"a").unwrap();
        }
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
        let s = Stage::begin(&out).unwrap();
        std::fs::create_dir(s.dir().join("sub")).unwrap();
        std::fs::write(s.dir().join("sub/b.txt"), b"b").unwrap();
        std::fs::write(s.dir().join("a.txt"), b"a").unwrap();
        let files = s.commit().unwrap();
        assert_eq!(files, vec![out.join("a.txt"), out.join("sub/b.txt")]);
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn stage_refuses_to_replace_an_input() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.npz");
        std::fs::write(&input, b"input").unwrap();
        let s = Stage::begin(d.path()).unwrap().inputs([input.as_path()]);
        std::fs::write(s.dir().join("in.npz"), b"output").unwrap();
        let e = s.commit().unwrap_err().to_string();
        assert!(e.contains("refusing to write over the input"), "{e}");
        assert_eq!(std::fs::read(&input).unwrap(), b"input");
    }

    #[test]
    fn safe_names() {
        assert_eq!(safe_component("../../x"), "_._.._x");
        assert_eq!(safe_component("moisture"), "moisture");
        assert_eq!(safe_component("/etc/passwd"), "_etc_passwd");
        assert!(check_file_name("a.npz", "--name").is_ok());
        assert!(check_file_name("../a.npz", "--name").is_err());
        assert!(check_file_name("d/a.npz", "--name").is_err());
        assert!(check_file_name("/a.npz", "--name").is_err());
    }
}
