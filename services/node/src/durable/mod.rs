//! Files that must survive a crash, written one way everywhere: the journal's segments and head file, the Track
//! outbox's segments, the edge's bundle files.
//!
//! - [`replace`] and [`Replacement`]: a file's new content goes to `<path>.tmp` in the same directory, is fsynced,
//!   and is renamed over `<path>`. A crash at any point leaves either the whole old file or the whole new one (a
//!   rename within one file system is atomic), never a mix; at worst a stale `.tmp` stays behind. The rename itself
//!   is durable once the directory is fsynced ([`sync_dir`]): [`replace`] does that, a [`Replacement`] leaves it to
//!   its caller, which may rename several files before one directory sync, or not need the rename to be durable.
//! - [`SegmentNames`]: numbered segment files in one directory (`<prefix><20 digits><suffix>`), listed in number
//!   order.
//!
//! Unix semantics are assumed (renaming over an open file, fsyncing a directory). This module is a leaf: it knows
//! nothing of what the files hold.
//!
//! The Track [`outbox`] is built on them.

pub mod outbox;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The directory `path` is in: its parent, or `.` for a bare file name (whose parent is the empty path, which
/// cannot be opened).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with `suffix` appended to its last component (`a/b.log` + `.tmp` is `a/b.log.tmp`), unlike
/// [`Path::with_extension`], which would replace `.log`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The temporary file a replacement of `path` is written to: `<path>.tmp`, in the same directory so that the
/// rename stays within one file system.
pub fn temp_path(path: &Path) -> PathBuf {
    with_suffix(path, ".tmp")
}

/// Makes the renames, creations and removals in `dir` durable (fsync of the directory).
///
/// # Errors
/// When the directory cannot be opened or synced (some platforms cannot open a directory at all).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens `path` for appending, creating it if needed.
///
/// # Errors
/// When the file cannot be opened or created.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Replaces `path` with `bytes` atomically and durably: temporary file, write, fsync, rename, fsync of the
/// directory. When this returns `Ok`, a crash leaves the new content; when it fails, the old content is in place
/// (or, if only the directory sync failed, the new content may not survive a crash).
///
/// # Errors
/// When the temporary file cannot be written or synced, the rename fails, or the directory cannot be synced.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut replacement = Replacement::create(path)?;
    replacement.write_all(bytes)?;
    replacement.commit()?;
    sync_dir(&parent_dir(path))
}

/// A new content for a file, written (buffered) to its [`temp_path`] and put in place by
/// [`commit`](Self::commit). Dropped without a commit (an error on the way, or nothing worth replacing), it
/// removes the temporary file and leaves the original untouched.
#[derive(Debug)]
pub struct Replacement {
    path: PathBuf,
    temp: TempFile,
    out: BufWriter<File>,
    /// The modification time to give the new file, so that what judges files by age (retention) sees no change.
    modified: Option<SystemTime>,
}

impl Replacement {
    /// Starts replacing `path` (which need not exist yet): creates (or truncates) its temporary file.
    ///
    /// # Errors
    /// When the temporary file cannot be created.
    pub fn create(path: &Path) -> io::Result<Self> {
        let temp = temp_path(path);
        let file = File::create(&temp)?;
        Ok(Self {
            path: path.to_path_buf(),
            temp: TempFile {
                path: temp,
                renamed: false,
            },
            out: BufWriter::new(file),
            modified: None,
        })
    }

    /// Gives the new file this modification time (typically the old file's) when it is committed.
    pub fn keep_modified(&mut self, at: SystemTime) {
        self.modified = Some(at);
    }

    /// Flushes and fsyncs the new content and renames it over the file. The rename is atomic but not yet durable:
    /// [`sync_dir`] the directory for that (after several commits, one sync does for all).
    ///
    /// # Errors
    /// When writing, setting the time, syncing or renaming fails; the temporary file is removed then.
    pub fn commit(self) -> io::Result<()> {
        let Self {
            path,
            mut temp,
            out,
            modified,
        } = self;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        if let Some(at) = modified {
            file.set_modified(at)?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&temp.path, &path)?;
        temp.renamed = true;
        Ok(())
    }
}

impl Write for Replacement {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A temporary file, removed when dropped unless it was renamed into place.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Numbered segment files in one directory, named `<prefix><number><suffix>` with the number zero-padded to 20
/// digits (any `u64` fits), so that names sort as their numbers do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentNames {
    /// Joined to the names as given: the empty path keeps names bare (`Path::new("").join(n)` is `n`), so that
    /// a log named by a bare file name gets bare segment paths too.
    dir: PathBuf,
    prefix: String,
    suffix: String,
}

impl SegmentNames {
    /// Segments `dir/<prefix>NNNNNNNNNNNNNNNNNNNN<suffix>`.
    pub fn new(
        dir: impl Into<PathBuf>,
        prefix: impl Into<String>,
        suffix: impl Into<String>,
    ) -> Self {
        Self {
            dir: dir.into(),
            prefix: prefix.into(),
            suffix: suffix.into(),
        }
    }

    /// The directory holding the segments (`.` when they are named bare).
    pub fn dir(&self) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            self.dir.clone()
        }
    }

    /// The path of segment `number`.
    pub fn path(&self, number: u64) -> PathBuf {
        self.dir
            .join(format!("{}{number:020}{}", self.prefix, self.suffix))
    }

    /// The number of the segment named `file_name`, if it is one of these segments: prefix, exactly 20 digits,
    /// suffix.
    pub fn number(&self, file_name: &str) -> Option<u64> {
        let digits = file_name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }

    /// The numbers of the segments present, lowest first (none when the directory does not exist).
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn list(&self) -> io::Result<Vec<u64>> {
        let mut numbers = Vec::new();
        let entries = match fs::read_dir(self.dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(numbers),
            Err(e) => return Err(e),
        };
        for entry in entries {
            if let Some(n) = entry?
                .file_name()
                .to_str()
                .and_then(|name| self.number(name))
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "aisle-durable-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn replace_puts_the_new_content_in_place_and_leaves_no_temporary_file() {
        let dir = TempDir::new("replace");
        let path = dir.0.join("catalog.held.json");
        replace(&path, b"old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(dir.names(), ["catalog.held.json"]);
        // The temporary name keeps the whole file name: no clash between `a.json` and `a.bin`.
        assert_eq!(temp_path(&path), dir.0.join("catalog.held.json.tmp"));
    }

    #[test]
    fn an_uncommitted_replacement_leaves_the_original_untouched() {
        let dir = TempDir::new("abandon");
        let path = dir.0.join("seg.log");
        fs::write(&path, b"original").unwrap();
        let mut r = Replacement::create(&path).unwrap();
        r.write_all(b"half of something").unwrap();
        assert!(temp_path(&path).exists());
        drop(r);
        assert_eq!(fs::read(&path).unwrap(), b"original");
        assert_eq!(dir.names(), ["seg.log"]);
    }

    #[test]
    fn a_replacement_can_keep_the_old_modification_time() {
        let dir = TempDir::new("mtime");
        let path = dir.0.join("seg.log");
        fs::write(&path, b"line\n").unwrap();
        let old = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut r = Replacement::create(&path).unwrap();
        r.keep_modified(old);
        r.write_all(b"other\n").unwrap();
        r.commit().unwrap();
        sync_dir(&dir.0).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.modified().unwrap(), old);
        assert_eq!(fs::read(&path).unwrap(), b"other\n");
    }

    #[test]
    fn a_failed_commit_removes_its_temporary_file() {
        let dir = TempDir::new("fail");
        // The target is a non-empty directory: the rename over it fails.
        let path = dir.0.join("busy");
        fs::create_dir_all(path.join("inside")).unwrap();
        let mut r = Replacement::create(&path).unwrap();
        r.write_all(b"x").unwrap();
        assert!(r.commit().is_err());
        assert_eq!(dir.names(), ["busy"]);
    }

    #[test]
    fn segment_names_round_trip_and_list_in_number_order() {
        let dir = TempDir::new("segments");
        let names = SegmentNames::new(&dir.0, "seg-", ".log");
        assert_eq!(names.path(7), dir.0.join("seg-00000000000000000007.log"));
        assert_eq!(names.number("seg-00000000000000000007.log"), Some(7));
        assert_eq!(
            names.number(&format!("seg-{:020}.log", u64::MAX)),
            Some(u64::MAX)
        );
        // Not ours: other digits counts, other prefixes or suffixes, temporary files.
        for other in [
            "seg-7.log",
            "seg-00000000000000000007.log.tmp",
            "seg-0000000000000000000x.log",
            "xseg-00000000000000000007.log",
        ] {
            assert_eq!(names.number(other), None, "{other}");
        }
        for n in [12, 3, 100] {
            fs::write(names.path(n), b"").unwrap();
        }
        fs::write(dir.0.join("seg-00000000000000000005.log.tmp"), b"").unwrap();
        fs::write(dir.0.join("other"), b"").unwrap();
        assert_eq!(names.list().unwrap(), [3, 12, 100]);
        // A directory not there yet holds no segments.
        let missing = SegmentNames::new(dir.0.join("missing"), "seg-", ".log");
        assert_eq!(missing.list().unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn segment_names_of_a_bare_file_name_stay_bare() {
        let names = SegmentNames::new("", "decisions.jsonl.", "");
        assert_eq!(
            names.path(1),
            PathBuf::from("decisions.jsonl.00000000000000000001")
        );
        assert_eq!(names.dir(), PathBuf::from("."));
        assert_eq!(parent_dir(Path::new("decisions.jsonl")), PathBuf::from("."));
        assert_eq!(
            parent_dir(Path::new("a/decisions.jsonl")),
            PathBuf::from("a")
        );
        assert_eq!(
            with_suffix(Path::new("a/b.log"), ".head"),
            PathBuf::from("a/b.log.head")
        );
    }
}
