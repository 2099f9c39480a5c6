//! Persistence of a small JSON document: the server keeps its name counter and
//! key in it, an agent its name and token.
//!
//! [`MemoryStore`] is the default and forgets on restart; [`FileStore`] keeps
//! the document in a JSON file, replaced atomically and readable only by its
//! owner. Implement [`NameStore`] to keep it anywhere else.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use parking_lot::Mutex;
use serde_json::Value;

/// A boxed future, as returned by [`NameStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store failed to load or save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(String);

impl StoreError {
    /// An error with a message.
    pub fn new(message: impl fmt::Display) -> Self {
        StoreError(message.to_string())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::new(e)
    }
}

impl From<StoreError> for crate::Error {
    fn from(e: StoreError) -> Self {
        crate::Error::Store(e.0)
    }
}

/// Pluggable persistence of one small JSON document.
///
/// `load` returns `Ok(None)` when nothing was saved yet. A store that cannot
/// read what it holds must return an error: agent-tunnel then refuses to start
/// rather than silently start fresh (and, on the server, give names again).
///
/// ```
/// use agent_protocol::store::{NameStore, StoreError, StoreFuture};
/// use serde_json::Value;
///
/// /// A store that logs every save and keeps nothing.
/// struct Forgetful;
///
/// impl NameStore for Forgetful {
///     fn load(&self) -> StoreFuture<'_, Option<Value>> {
///         Box::pin(async { Ok(None) })
///     }
///     fn save<'a>(&'a self, doc: &'a Value) -> StoreFuture<'a, ()> {
///         Box::pin(async move {
///             tracing::info!(bytes = doc.to_string().len(), "would save");
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait NameStore: Send + Sync + 'static {
    /// Loads the document, or `None` when none was saved.
    fn load(&self) -> StoreFuture<'_, Option<Value>>;
    /// Saves the document; it must be durable when the future resolves.
    fn save<'a>(&'a self, doc: &'a Value) -> StoreFuture<'a, ()>;
}

/// Keeps the document in memory (the default): names survive reconnects but
/// not a restart of the process. Its `Debug` shows only whether it holds a
/// document: the server's key and an agent's token live in it.
#[derive(Default)]
pub struct MemoryStore(Mutex<Option<Value>>);

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("saved", &self.0.lock().is_some())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl NameStore for MemoryStore {
    fn load(&self) -> StoreFuture<'_, Option<Value>> {
        let doc = self.0.lock().clone();
        Box::pin(async move { Ok(doc) })
    }

    fn save<'a>(&'a self, doc: &'a Value) -> StoreFuture<'a, ()> {
        *self.0.lock() = Some(doc.clone());
        Box::pin(async { Ok(()) })
    }
}

/// Keeps the document in a JSON file.
///
/// Saves write a temporary file beside the target, flush it to disk and rename
/// it over the target, so a crash leaves the old or the new document, never a
/// torn one. On Unix the file is created with mode 0600. A file that exists
/// but cannot be read or parsed is an error, never an empty start.
///
/// ```no_run
/// use agent_protocol::store::FileStore;
/// let store = FileStore::new("/var/lib/my-agent/identity.json");
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path`. The directory must exist.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn load_file(path: &Path) -> Result<Option<Value>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::new(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::new(format!("{} is corrupt: {e}", path.display())))
}

fn save_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| StoreError::new(format!("{} names no file", path.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{:016x}", rand::random::<u64>()));
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; not every platform can open a directory.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::new(format!("cannot save {}: {e}", path.display()))
    })
}

impl NameStore for FileStore {
    fn load(&self) -> StoreFuture<'_, Option<Value>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || load_file(&path))
                .await
                .map_err(StoreError::new)?
        })
    }

    fn save<'a>(&'a self, doc: &'a Value) -> StoreFuture<'a, ()> {
        let path = self.path.clone();
        let bytes = serde_json::to_vec_pretty(doc);
        Box::pin(async move {
            let bytes = bytes.map_err(StoreError::new)?;
            tokio::task::spawn_blocking(move || save_file(&path, &bytes))
                .await
                .map_err(StoreError::new)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("names.json"));
        assert_eq!(store.load().await.unwrap(), None);
        let doc = serde_json::json!({"next": 3});
        store.save(&doc).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(doc));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn corrupt_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("names.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let err = FileStore::new(&path).load().await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
