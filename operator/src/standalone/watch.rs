//! Noticing edits to the input files without inotify: poll modification times and sizes, and
//! report a change once it has settled (editors often write a file in several steps).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What was seen of one file: its modification time and size, or None when it is missing.
pub type Seen = Option<(Option<SystemTime>, u64)>;

/// Every YAML file under the watched paths (and each path named explicitly), with what was
/// seen of it. A file added, removed, rewritten or touched changes the fingerprint.
pub type Fingerprint = Vec<(PathBuf, Seen)>;

/// Takes the fingerprint of `paths`: the same files `objects::load_paths` reads (YAML files in
/// directories, recursively, hidden entries skipped; named files whatever their extension).
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut seen = Vec::new();
    for path in paths {
        visit(path, &mut seen);
    }
    seen
}

fn visit(path: &Path, seen: &mut Fingerprint) {
    match std::fs::metadata(path) {
        Err(_) => seen.push((path.to_path_buf(), None)),
        Ok(metadata) if metadata.is_dir() => {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            for entry in entries.iter().filter(|e| !is_hidden(e)) {
                if entry.is_dir() || is_yaml(entry) {
                    visit(entry, seen);
                }
            }
        }
        Ok(metadata) => seen.push((
            path.to_path_buf(),
            Some((metadata.modified().ok(), metadata.len())),
        )),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Turns a series of fingerprints into "changed and settled" events: a change is reported
/// once the fingerprint has stayed the same for `quiet`.
#[derive(Debug)]
pub struct Debouncer {
    last: Fingerprint,
    changed_at: Option<Instant>,
    quiet: Duration,
}

impl Debouncer {
    /// Starts from `initial`: the fingerprint taken before the files were first read.
    pub fn new(initial: Fingerprint, quiet: Duration) -> Self {
        Self {
            last: initial,
            changed_at: None,
            quiet,
        }
    }

    /// Feeds one observation taken at `now`; true when the files changed and have been quiet
    /// for long enough to be read again.
    pub fn observe(&mut self, current: Fingerprint, now: Instant) -> bool {
        if current != self.last {
            self.last = current;
            self.changed_at = Some(now);
            return false;
        }
        match self.changed_at {
            Some(at) if now.duration_since(at) >= self.quiet => {
                self.changed_at = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fingerprint_sees_yaml_files_only() {
        let dir = temp_dir("files");
        std::fs::write(dir.join("a.yaml"), "a: 1\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        std::fs::write(dir.join(".hidden.yaml"), "x").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/b.yml"), "b: 1\n").unwrap();
        let seen = fingerprint(std::slice::from_ref(&dir));
        let names: Vec<_> = seen.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(names, vec![dir.join("a.yaml"), dir.join("sub/b.yml")]);

        std::fs::write(dir.join("a.yaml"), "a: 22\n").unwrap();
        assert_ne!(fingerprint(std::slice::from_ref(&dir)), seen);
        std::fs::write(dir.join("notes.txt"), "changed").unwrap();
        let again = fingerprint(std::slice::from_ref(&dir));
        std::fs::remove_file(dir.join("sub/b.yml")).unwrap();
        assert_ne!(fingerprint(std::slice::from_ref(&dir)), again);

        let missing = dir.join("missing.yaml");
        assert_eq!(
            fingerprint(std::slice::from_ref(&missing)),
            vec![(missing, None)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debouncer_waits_for_quiet() {
        let quiet = Duration::from_millis(300);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let version = |n: u64| vec![(PathBuf::from("a.yaml"), Some((None, n)))];
        let mut debouncer = Debouncer::new(version(1), quiet);
        assert!(!debouncer.observe(version(1), at(250)));
        assert!(!debouncer.observe(version(2), at(500)));
        assert!(!debouncer.observe(version(3), at(750)), "still changing");
        assert!(!debouncer.observe(version(3), at(1000)), "quiet for 250 ms");
        assert!(debouncer.observe(version(3), at(1250)), "quiet for 500 ms");
        assert!(!debouncer.observe(version(3), at(1500)), "reported once");
    }
}
