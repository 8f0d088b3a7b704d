//! [`FileStore`]: file bytes under `<data_dir>/files/<file id>`. Every write goes to a temporary
//! name, is synced, and is renamed into place, so a crash never leaves a half-written file under
//! a file id.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory holding the file bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// Characters allowed in a file id used as a file name (ids are generated, but URLs are not).
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl FileStore {
    /// Creates `dir` if needed and removes temporaries left by a crash.
    /// Errors: the directory cannot be created or read.
    pub fn open(dir: PathBuf) -> std::io::Result<FileStore> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(FileStore { dir })
    }

    /// Where a file's bytes live (None for an id that cannot be a stored file).
    fn path(&self, id: &str) -> Option<PathBuf> {
        safe_id(id).then(|| self.dir.join(id))
    }

    /// A fresh temporary path to stream an upload into; pass it to [`FileStore::commit`] or
    /// [`FileStore::discard`].
    pub fn temp_path(&self) -> PathBuf {
        self.dir
            .join(format!("tmp-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Syncs the temporary `tmp` and moves it to file `id`. Errors: I/O.
    pub async fn commit(&self, tmp: PathBuf, id: &str) -> std::io::Result<()> {
        let dest = self.path(id).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid file id")
        })?;
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &dest)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Removes a temporary file (best effort).
    pub async fn discard(&self, tmp: PathBuf) {
        let _ = tokio::fs::remove_file(tmp).await;
    }

    /// Writes `bytes` as file `id` (temporary name, sync, rename), replacing any earlier one.
    /// Errors: I/O.
    pub async fn write(&self, id: &str, bytes: Vec<u8>) -> std::io::Result<()> {
        let dest = self.path(id).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid file id")
        })?;
        let tmp = self.temp_path();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dest)?;
            sync_dir(&dir);
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// A file's bytes. Errors: NotFound, other I/O.
    pub async fn read(&self, id: &str) -> std::io::Result<Vec<u8>> {
        match self.path(id) {
            Some(p) => tokio::fs::read(p).await,
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    /// Removes file `id` (best effort).
    pub async fn remove(&self, id: &str) {
        if let Some(p) = self.path(id) {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
}

/// Makes a rename in `dir` durable (best effort; not all platforms can sync a directory).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_not_file_names_are_refused() {
        assert!(safe_id("file-abc_1"));
        assert!(!safe_id("../etc/passwd"));
        assert!(!safe_id("a/b"));
        assert!(!safe_id(""));
    }

    #[tokio::test]
    async fn write_read_remove() {
        let dir = std::env::temp_dir().join(format!("govlm-files-{}", uuid::Uuid::new_v4()));
        let fs = FileStore::open(dir.clone()).unwrap();
        fs.write("file-x", b"hello\n".to_vec()).await.unwrap();
        assert_eq!(fs.read("file-x").await.unwrap(), b"hello\n");
        fs.remove("file-x").await;
        assert!(fs.read("file-x").await.is_err());
        assert!(fs.read("../x").await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
