//! Durable file writes: temp file → write → fsync → rename → fsync directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that, once this returns, the file is on disk
/// under its final name with all its bytes, or not there at all. The temp file
/// lives in `tmp_dir` (same file system) and is removed on failure.
pub fn write_durably(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_parts_durably(tmp_dir, path, &[bytes])
}

/// [`write_durably`] for bytes that arrive in pieces: the file holds them in
/// order. The target's directory must exist and be durable
/// ([`create_dir_durably`]); this makes only the new entry in it durable.
pub fn write_parts_durably(tmp_dir: &Path, path: &Path, parts: &[impl AsRef<[u8]>]) -> io::Result<()> {
    write_parts(tmp_dir, path, parts, Replace::Yes).map(|_| ())
}

/// [`write_parts_durably`] for a file that must be new: if another writer
/// put a file at `path` first, this one is dropped and `Ok(false)` says so
/// (for content-addressed files, where whoever came first wrote the same bytes).
pub fn write_parts_durably_new(tmp_dir: &Path, path: &Path, parts: &[impl AsRef<[u8]>]) -> io::Result<bool> {
    write_parts(tmp_dir, path, parts, Replace::No)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

fn write_parts(tmp_dir: &Path, path: &Path, parts: &[impl AsRef<[u8]>], replace: Replace) -> io::Result<bool> {
    let name = path.file_name().ok_or_else(|| io::Error::other("durable write target has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let tmp = tmp_dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        write_all_parts(&mut file, parts)?;
        file.sync_data()?;
        drop(file);
        let parent = path.parent().ok_or_else(|| io::Error::other("durable write target has no parent"))?;
        let placed = match replace {
            Replace::Yes => fs::rename(&tmp, path).map(|()| true)?,
            Replace::No => rename_no_replace(&tmp, path)?,
        };
        if placed {
            sync_dir(parent)?;
        }
        Ok(placed)
    })();
    if !matches!(result, Ok(true)) {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` unless `to` exists; `Ok(false)` if it did.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("a path with a NUL byte"));
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, resolved against the working directory.
    let done = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if done == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        // A file system without the flag: a hard link is just as exclusive.
        Some(libc::EINVAL | libc::ENOSYS) => match fs::hard_link(from, to) {
            Ok(()) => fs::remove_file(from).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        _ => Err(error),
    }
}

/// Writes every part, in order, with as few `writev` calls as it takes.
fn write_all_parts(file: &mut File, parts: &[impl AsRef<[u8]>]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|part| IoSlice::new(part.as_ref())).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `dir` and any missing parents, and fsyncs the parent of every
/// level it looked at, whoever created it: a directory another thread made
/// a moment ago may not be durable yet, and a file renamed into it must not
/// be acknowledged before it is.
pub(crate) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        if dir.parent().is_some() {
            create_dir_durably(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(parent)
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The paths of the regular files directly in `dir` (none if it is missing).
pub(crate) fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    entries_in(dir, |kind| kind.is_file())
}

/// The paths of the subdirectories directly in `dir` (none if it is missing).
pub(crate) fn dirs_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    entries_in(dir, |kind| kind.is_dir())
}

fn entries_in(dir: &Path, wanted: impl Fn(&fs::FileType) -> bool) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if wanted(&entry.file_type()?) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        create_dir_durably(&dir.path().join("a/b")).unwrap();
        let target = dir.path().join("a/b/file");
        write_durably(&tmp, &target, b"hello").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert!(files_in(&tmp).unwrap().is_empty());
    }

    #[test]
    fn a_new_file_is_written_once_whoever_comes_second() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let target = dir.path().join("chunk");
        assert!(write_parts_durably_new(&tmp, &target, &[b"same bytes"]).unwrap());
        assert!(!write_parts_durably_new(&tmp, &target, &[b"same bytes"]).unwrap(), "the second writer finds it there");
        assert_eq!(fs::read(&target).unwrap(), b"same bytes");
        assert!(files_in(&tmp).unwrap().is_empty(), "the second writer's temp file is gone");
    }

    #[test]
    fn failed_write_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        // The target's parent is a file, so the rename cannot happen.
        fs::write(dir.path().join("blocker"), b"").unwrap();
        let target = dir.path().join("blocker/file");
        assert!(write_durably(&tmp, &target, b"hello").is_err());
        assert!(files_in(&tmp).unwrap().is_empty());
    }
}
