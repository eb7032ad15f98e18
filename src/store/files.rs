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
        fs::rename(&tmp, path)?;
        sync_dir(parent)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
