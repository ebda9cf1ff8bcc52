//! The local source: a directory of Kubernetes-style YAML, watched.
//!
//! Every `*.yaml` / `*.yml` file directly in the directory is read (hidden
//! files, such as editors' swap files, are skipped). Rules that keep a typo
//! from taking anything down:
//! - a document that cannot be used is reported (file, position, object,
//!   reason) and the object's last good version, if there was one, stays;
//! - a file that is not valid YAML keeps all the objects it last defined;
//! - an object defined twice keeps its first definition (in file-name order)
//!   and the duplicate is reported with both places.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::Watcher;
use tokio::sync::{mpsc, watch};

use super::{
    yaml::{self, DocumentError},
    ConfigSnapshot,
};
use crate::objects::{Object, ObjectKey};

/// Why the directory itself cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalSourceError {
    #[error(
        "config directory {path} cannot be read: {source}; create it or pass another --config-dir"
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching config directory {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The directory and what was last loaded from it.
#[derive(Debug)]
pub struct LocalSource {
    dir: PathBuf,
    /// Last good objects, with the file each came from.
    last_good: BTreeMap<ObjectKey, (Object, PathBuf)>,
}

impl LocalSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last_good: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and returns the resulting snapshot.
    pub fn load(&mut self) -> Result<ConfigSnapshot, LocalSourceError> {
        let files = self.yaml_files()?;
        let mut objects: BTreeMap<ObjectKey, (Object, PathBuf, usize)> = BTreeMap::new();
        let mut errors = Vec::new();
        let mut kept_from_broken_files = Vec::new();
        for path in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(err) => {
                    errors.push(DocumentError {
                        file: path.display().to_string(),
                        document: 0,
                        key: None,
                        reason: format!("cannot be read: {err}"),
                    });
                    kept_from_broken_files.push(path);
                    continue;
                }
            };
            let mut file_is_broken = false;
            for (index, result) in yaml::parse_file(&path, &text).into_iter().enumerate() {
                match result {
                    Ok(object) => {
                        let key = object.key();
                        if let Some((_, first_file, first_doc)) = objects.get(&key) {
                            errors.push(DocumentError {
                                file: path.display().to_string(),
                                document: index + 1,
                                key: Some(key.clone()),
                                reason: format!(
                                    "defined already in {} (document {first_doc}); this copy is ignored",
                                    first_file.display()
                                ),
                            });
                        } else {
                            objects.insert(key, (object, path.clone(), index + 1));
                        }
                    }
                    Err(error) => {
                        if error.key.is_none() && error.reason.starts_with("not valid YAML") {
                            file_is_broken = true;
                        }
                        if let Some(key) = &error.key {
                            if let Some((object, origin)) = self.last_good.get(key) {
                                objects
                                    .entry(key.clone())
                                    .or_insert_with(|| (object.clone(), origin.clone(), 0));
                            }
                        }
                        errors.push(error);
                    }
                }
            }
            if file_is_broken {
                kept_from_broken_files.push(path);
            }
        }
        // A file that could not be parsed to its end keeps what it defined.
        for broken in &kept_from_broken_files {
            for (key, (object, origin)) in &self.last_good {
                if origin == broken {
                    objects
                        .entry(key.clone())
                        .or_insert_with(|| (object.clone(), origin.clone(), 0));
                }
            }
        }
        for error in &errors {
            tracing::warn!(file = %error.file, document = error.document, object = ?error.key.as_ref().map(ToString::to_string), reason = %error.reason, "rejected config document");
        }
        self.last_good = objects
            .iter()
            .map(|(key, (object, origin, _))| (key.clone(), (object.clone(), origin.clone())))
            .collect();
        Ok(ConfigSnapshot {
            objects: objects
                .into_iter()
                .map(|(key, (object, _, _))| (key, object))
                .collect(),
            errors,
        })
    }

    fn yaml_files(&self) -> Result<Vec<PathBuf>, LocalSourceError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|source| LocalSourceError::Unreadable {
                path: self.dir.clone(),
                source,
            })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.')
                    && (name.ends_with(".yaml") || name.ends_with(".yml"))
                    && path.is_file()
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Loads the directory, publishes the snapshot, then reloads and
    /// republishes whenever a file changes (after `debounce` of quiet), until
    /// every receiver is gone. A snapshot equal to the previous one is not
    /// republished.
    pub async fn watch(
        mut self,
        publish: watch::Sender<Arc<ConfigSnapshot>>,
        debounce: Duration,
    ) -> Result<(), LocalSourceError> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = events_tx.send(());
                }
            })
            .map_err(|source| LocalSourceError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| LocalSourceError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        let first = self.load()?;
        publish.send_replace(Arc::new(first));
        while events.recv().await.is_some() {
            // Coalesce a burst of events (an editor's save is several).
            loop {
                match tokio::time::timeout(debounce, events.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return Ok(()),
                    Err(_) => break,
                }
            }
            let snapshot = match self.load() {
                Ok(snapshot) => snapshot,
                Err(err) => {
                    tracing::warn!(%err, "config directory unreadable; keeping the last snapshot");
                    continue;
                }
            };
            let changed = **publish.borrow() != snapshot;
            if changed {
                tracing::info!(
                    objects = snapshot.objects.len(),
                    errors = snapshot.errors.len(),
                    "config changed"
                );
                publish.send_replace(Arc::new(snapshot));
            }
            if publish.is_closed() {
                return Ok(());
            }
        }
        Ok(())
    }
}
