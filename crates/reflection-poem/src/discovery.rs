//! The runtime discovery file the `genkit` CLI reads to find this process.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Files whose presence makes a folder the CLI's project root (from genkit-cli's sources).
/// `Cargo.toml` is not among them.
const ROOT_MARKERS: &[&str] = &[
    "package.json",
    "go.mod",
    "pyproject.toml",
    "requirements.txt",
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "pubspec.yaml",
];

/// The folder whose `.genkit/runtimes/` the CLI reads: the nearest ancestor of `cwd` (itself
/// included) that holds one of the CLI's marker files, else `cwd` itself.
///
/// The walk up stops at `$HOME`, and a folder counts only when it and its marker belong to
/// this process's user: another user's `/tmp/package.json` must not make `/tmp` the place
/// this runtime writes to.
pub fn discovery_root(cwd: &Path) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    root_within(cwd, home.as_deref(), own_uid())
}

fn root_within(cwd: &Path, home: Option<&Path>, uid: Option<u32>) -> PathBuf {
    for dir in cwd.ancestors() {
        let marked = ROOT_MARKERS.iter().any(|marker| {
            let file = dir.join(marker);
            file.is_file() && owned_by(&file, uid) && owned_by(dir, uid)
        });
        if marked {
            return dir.to_path_buf();
        }
        if Some(dir) == home {
            break;
        }
    }
    cwd.to_path_buf()
}

/// This process's user, as the owner of `/proc/self` (Linux); `None` where that is unknown,
/// and then ownership is not checked.
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn owned_by(path: &Path, uid: Option<u32>) -> bool {
    use std::os::unix::fs::MetadataExt;
    uid.is_none_or(|uid| fs::symlink_metadata(path).is_ok_and(|m| m.uid() == uid))
}

/// The discovery file's content, field names as the CLI expects them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeFile {
    /// `"<pid>-<port>"`.
    pub id: String,
    /// This process.
    pub pid: u32,
    /// `http://localhost:<port>`.
    pub reflection_server_url: String,
    /// When the runtime started listening, RFC 3339 UTC.
    pub timestamp: String,
    /// `rust/<version>`.
    pub genkit_version: String,
    /// Always 1.
    pub reflection_api_spec_version: u32,
    /// A display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl RuntimeFile {
    /// The file for this process listening on `port`.
    pub fn new(port: u16, name: Option<String>) -> Self {
        let pid = std::process::id();
        RuntimeFile {
            id: format!("{pid}-{port}"),
            pid,
            reflection_server_url: format!("http://localhost:{port}"),
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            genkit_version: crate::GENKIT_VERSION.to_owned(),
            reflection_api_spec_version: crate::REFLECTION_API_SPEC_VERSION,
            name,
        }
    }

    /// Writes it under `<root>/.genkit/runtimes/`, atomically (temp file + rename), so the CLI
    /// never reads half a file. The temp file has a random name and is created new (it fails
    /// rather than follow a link planted there). Returns the path.
    ///
    /// # Errors
    /// When the folder cannot be created or written.
    pub fn write(&self, root: &Path) -> io::Result<PathBuf> {
        let dir = root.join(".genkit").join("runtimes");
        fs::create_dir_all(&dir)?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let port = self.id.rsplit('-').next().unwrap_or("0");
        let path = dir.join(format!("{}-{port}-{millis}.json", self.pid));
        let temp = dir.join(format!(
            ".{}-{:016x}.json.tmp",
            self.pid,
            rand::random::<u64>()
        ));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut file| {
                io::Write::write_all(&mut file, &serde_json::to_vec_pretty(self)?)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map(|()| path)
    }

    /// Removes the file at `path` if it is still ours (its `pid` is this process).
    ///
    /// # Errors
    /// When the file exists, is ours, and cannot be removed.
    pub fn remove_if_ours(path: &Path) -> io::Result<bool> {
        let ours = fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RuntimeFile>(&bytes).ok())
            .is_some_and(|file| file.pid == std::process::id());
        if ours {
            fs::remove_file(path)?;
        }
        Ok(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reflection-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn root_is_the_nearest_marked_ancestor_else_cwd() {
        let base = temp("root");
        let deep = base.join("a/b/c");
        fs::create_dir_all(&deep).unwrap();
        assert_eq!(discovery_root(&deep), deep, "no marker anywhere below /tmp");
        fs::write(base.join("a/Cargo.toml"), "").unwrap();
        assert_eq!(discovery_root(&deep), deep, "Cargo.toml is not a marker");
        fs::write(base.join("a/package.json"), "{}").unwrap();
        assert_eq!(discovery_root(&deep), base.join("a"));
        fs::write(deep.join("go.mod"), "").unwrap();
        assert_eq!(discovery_root(&deep), deep);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_walk_stops_at_home_and_skips_folders_of_other_users() {
        let base = temp("home");
        let home = base.join("home");
        let deep = home.join("project/src");
        fs::create_dir_all(&deep).unwrap();
        fs::write(base.join("package.json"), "{}").unwrap();
        assert_eq!(
            root_within(&deep, Some(&home), own_uid()),
            deep,
            "a marker above $HOME does not count"
        );
        assert_eq!(root_within(&deep, None, own_uid()), base);
        let someone_else = own_uid().map(|uid| uid.wrapping_add(1));
        assert_eq!(
            root_within(&deep, None, someone_else),
            deep,
            "a folder of another user does not count"
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn writes_the_fields_the_cli_reads_and_removes_only_its_own() {
        let root = temp("file");
        let path = RuntimeFile::new(3100, Some("test".into()))
            .write(&root)
            .unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with(&format!("{}-3100-", std::process::id())),
            "{name}"
        );
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["id"], format!("{}-3100", std::process::id()));
        assert_eq!(json["pid"], std::process::id());
        assert_eq!(json["reflectionServerUrl"], "http://localhost:3100");
        assert_eq!(json["reflectionApiSpecVersion"], 1);
        assert!(json["genkitVersion"].as_str().unwrap().starts_with("rust/"));
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));

        let other = root.join(".genkit/runtimes/1-3100-1.json");
        let mut foreign = RuntimeFile::new(3100, None);
        foreign.pid = 1;
        fs::write(&other, serde_json::to_vec(&foreign).unwrap()).unwrap();
        assert!(!RuntimeFile::remove_if_ours(&other).unwrap());
        assert!(other.exists(), "another process's file is left alone");
        assert!(RuntimeFile::remove_if_ours(&path).unwrap());
        assert!(!path.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
