//! Where each name was last pushed from (`origins.json` in the home), so a
//! push of another file under the same name can say so: `push
//! work/config.yaml` then `push home/config.yaml` would otherwise silently
//! make two versions of one name.
//!
//! Only a hint, kept on this machine: it is replaced atomically, a lost or
//! unreadable one is treated as empty, and a race between two pushes at
//! once loses at most one entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the home.
pub const ORIGINS_FILE: &str = "origins.json";
/// Most names remembered; past that, the file is not grown.
pub const MAX_ORIGINS: usize = 100_000;

/// Name → the absolute path it was last pushed from.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Origins(BTreeMap<String, PathBuf>);

impl Origins {
    /// The home's origins, or none if the file is missing or unreadable.
    pub fn load(home: &Path) -> Self {
        std::fs::read(home.join(ORIGINS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Where `name` was last pushed from, if known.
    pub fn get(&self, name: &str) -> Option<&Path> {
        self.0.get(name).map(PathBuf::as_path)
    }

    /// These origins with `name` last pushed from `path`.
    pub fn with(mut self, name: &str, path: &Path) -> Self {
        if self.0.len() < MAX_ORIGINS || self.0.contains_key(name) {
            self.0.insert(name.to_owned(), path.to_owned());
        }
        self
    }

    /// Replaces the file atomically.
    pub fn save(&self, home: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::store::write_durably(home, &home.join(ORIGINS_FILE), &bytes)
    }
}
