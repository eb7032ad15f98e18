//! The home directory (`$P2PFS_HOME`): keys, configuration, the lock, the
//! peer table, and the store (docs/FORMAT.md, "On-disk layout of a home").
//!
//! ```text
//! config.toml          chunk sizes
//! keys/node.key        this machine's Ed25519 secret (64 hex), mode 0600
//! keys/owner.key       the owner's root key (64 hex), mode 0600
//! keys/network.key     the network secret (64 hex), mode 0600
//! lock                 flock: shared by readers and adders, exclusive for serve, gc, key import
//! peers.json           the peer table ([`peers`])
//! origins.json         where each name was last pushed from ([`origins`])
//! pending-unpins.json  removals some nodes have not confirmed ([`pending`]), and its .lock
//! serve.json           written by a running node (`crate::node::ServeInfo`)
//! pushes/              the CLI's push journal (`cli/journal.rs`)
//! store/               see `crate::store`
//! ```
//!
//! A key file that group or others can read is refused, never silently used.

pub mod origins;
pub mod peers;
pub mod pending;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkerConfig;
use crate::crypto::{KEY_LEN, OwnerKeys};
use crate::id::{self, NodeId};
use crate::store::{Sharing, Store, StoreError};

const KEY_NAMES: [&str; 3] = ["node.key", "owner.key", "network.key"];

/// A home directory that cannot be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// A file system operation failed.
    #[error("{what} ({path})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A key file is readable by group or others.
    #[error("{path} is readable by group or others (mode {mode:03o}); keys must be private: run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not hold 64 hex characters.
    #[error("{0} is not a p2pfs key file (expected 64 hex characters); restore it from a backup")]
    KeyMalformed(PathBuf),
    /// Another process holds the home's lock.
    #[error("{path} is in use by another p2pfs process{holder}; wait for it to finish, or add --wait to wait for it")]
    Locked {
        /// The home directory.
        path: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },
    /// The configuration file does not parse.
    #[error("{path} is not a valid configuration: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HomeError + use<> {
    let path = path.to_owned();
    move |source| HomeError::Io { what, path, source }
}

/// The contents of `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Chunk size bounds for new pushes.
    #[serde(default)]
    pub chunker: ChunkerConfig,
    /// How new chunks are compressed.
    #[serde(default)]
    pub compression: CompressionConfig,
    /// How pushes place chunks on peers.
    #[serde(default)]
    pub push: PushConfig,
}

/// `[push]` in `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Erasure code for pushes to peers, `"K+M"` (e.g. `"4+2"`), instead of
    /// replicas; `push --replicas N` or `--erasure` overrides it.
    #[serde(default)]
    pub erasure: Option<String>,
}

impl PushConfig {
    /// The erasure code pushes use by default, if one is set.
    pub fn erasure(&self) -> Option<crate::erasure::Shape> {
        self.erasure.as_deref().and_then(|code| code.parse().ok())
    }
}

/// `[compression]` in `config.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// zstd level for chunks that shrink (-7 fastest … 19 smallest); 0 stores every chunk raw.
    pub level: i8,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self { level: crate::sealing::DEFAULT_LEVEL }
    }
}

impl CompressionConfig {
    /// How new chunks are sealed.
    pub fn sealing(&self) -> crate::sealing::Sealing {
        crate::sealing::Sealing::current(self.level)
    }
}

impl Config {
    /// Reads and checks the home's `config.toml` (no lock needed: only `init` writes it).
    pub fn load(home: &Path) -> Result<Self, HomeError> {
        let config_path = home.join("config.toml");
        let text = fs::read_to_string(&config_path).map_err(io_err("reading configuration", &config_path))?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| HomeError::Config { path: config_path.clone(), reason: e.message().to_owned() })?;
        config
            .chunker
            .validate()
            .map_err(|e| HomeError::Config { path: config_path.clone(), reason: e.to_string() })?;
        let levels = crate::sealing::LEVELS;
        if !levels.contains(&config.compression.level) {
            let reason = format!(
                "[compression] level = {} is outside {} ..= {} (0 turns compression off)",
                config.compression.level,
                levels.start(),
                levels.end()
            );
            return Err(HomeError::Config { path: config_path, reason });
        }
        if let Some(code) = &config.push.erasure
            && let Err(e) = code.parse::<crate::erasure::Shape>()
        {
            return Err(HomeError::Config { path: config_path, reason: format!("[push] erasure: {e}") });
        }
        Ok(config)
    }
}

/// The three secrets of a home.
pub struct Keys {
    /// This machine's Ed25519 secret.
    pub node: [u8; KEY_LEN],
    /// The owner's root key.
    pub owner: [u8; KEY_LEN],
    /// The network secret.
    pub network: [u8; KEY_LEN],
}

impl Keys {
    /// Reads the home's keys without taking its lock (for commands that
    /// only talk to peers, and may run beside `p2pfs serve`).
    pub fn load(home: &Path) -> Result<Self, HomeError> {
        Ok(Keys {
            node: read_key(&home.join("keys/node.key"))?,
            owner: read_key(&home.join("keys/owner.key"))?,
            network: read_key(&home.join("keys/network.key"))?,
        })
    }

    /// This machine's NodeId.
    pub fn node_id(&self) -> NodeId {
        NodeId(ed25519_dalek::SigningKey::from_bytes(&self.node).verifying_key().to_bytes())
    }

    /// The owner's derived keys.
    pub fn owner_keys(&self) -> OwnerKeys {
        OwnerKeys::derive(&self.owner)
    }
}

/// What `init` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new home was made.
    Created,
    /// The home was complete already; nothing changed.
    AlreadyInitialised,
}

/// The default home: `$P2PFS_HOME`, else the platform's data directory + `p2pfs`.
pub fn default_home_path() -> Option<PathBuf> {
    match std::env::var_os("P2PFS_HOME") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => dirs::data_dir().map(|dir| dir.join("p2pfs")),
    }
}

/// Whether `path` holds a complete home (config and all keys).
pub fn is_initialised(path: &Path) -> bool {
    path.join("config.toml").is_file() && KEY_NAMES.iter().all(|name| path.join("keys").join(name).is_file())
}

/// Creates what is missing of a home at `path`: directories, keys, config,
/// store. Existing keys and config are never touched.
pub fn init(path: &Path) -> Result<InitOutcome, HomeError> {
    if is_initialised(path) {
        return Ok(InitOutcome::AlreadyInitialised);
    }
    let keys_dir = path.join("keys");
    for dir in [path, &keys_dir] {
        fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("restricting directory", dir))?;
    }
    for name in KEY_NAMES {
        let key_path = keys_dir.join(name);
        if !key_path.exists() {
            let key: [u8; KEY_LEN] = rand::random();
            write_new_private(&key_path, format!("{}\n", id::to_hex(&key)).as_bytes())?;
        }
    }
    let config_path = path.join("config.toml");
    if !config_path.exists() {
        write_new_private(&config_path, default_config_text().as_bytes())?;
    }
    let home = Home::open(path)?;
    drop(home);
    Ok(InitOutcome::Created)
}

fn default_config_text() -> String {
    let chunker = ChunkerConfig::default();
    format!(
        "# p2pfs configuration.\n\
         \n\
         # Chunk sizes in bytes for new pushes. Changing them is safe, but new\n\
         # versions then share no chunks with versions pushed before.\n\
         [chunker]\n\
         min_size = {}\n\
         avg_size = {}\n\
         max_size = {}\n\
         \n\
         # zstd level for chunks that shrink: -7 (fastest) to 19 (smallest);\n\
         # 0 stores every chunk as it is. Chunks that do not shrink are always\n\
         # stored as they are.\n\
         [compression]\n\
         level = {}\n\
         \n\
         # Pushes to peers store each chunk on 3 nodes (push --replicas N).\n\
         # An erasure code K+M stores it as K data + M parity shards on K+M\n\
         # nodes instead: any K rebuild it, (K+M)/K times its size is stored.\n\
         [push]\n\
         # erasure = \"4+2\"\n",
        chunker.min_size,
        chunker.avg_size,
        chunker.max_size,
        crate::sealing::DEFAULT_LEVEL
    )
}

/// Writes a new file readable by its owner only, durably.
/// Replaces one of the home's key files (`owner.key` or `network.key`)
/// atomically: a private temp file, fsynced, renamed over the old one.
pub fn replace_key(home: &Path, name: &str, key: &[u8; KEY_LEN]) -> Result<(), HomeError> {
    let keys_dir = home.join("keys");
    let path = keys_dir.join(name);
    let tmp = keys_dir.join(format!(".{name}.{:08x}.tmp", rand::random::<u32>()));
    write_new_private(&tmp, format!("{}\n", id::to_hex(key)).as_bytes())?;
    fs::rename(&tmp, &path).map_err(io_err("replacing key file", &path))?;
    File::open(&keys_dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", &keys_dir))
}

fn write_new_private(path: &Path, contents: &[u8]) -> Result<(), HomeError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("creating file", path))?;
    file.write_all(contents).map_err(io_err("writing file", path))?;
    file.sync_all().map_err(io_err("syncing file", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))?;
    }
    Ok(())
}

/// What a command does with a home, which decides whom it shares it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only (`ls`, `log`, `pull`, `status`): beside any command but
    /// `gc` and `serve`, and on a read-only disk.
    Read,
    /// Reads and adds (`push`, `rm`): beside readers and other adders, never
    /// beside `gc` (which deletes what no version references yet).
    Add,
    /// This process alone (`serve`, `gc`, `key import`).
    Exclusive,
}

/// An open home, locked for this process.
pub struct Home {
    path: PathBuf,
    keys: Keys,
    config: Config,
    store: Store,
    _lock: Option<HomeLock>,
}

impl Home {
    /// Locks, reads and opens the home at `path`, which must be
    /// initialised, for this process alone.
    pub fn open(path: &Path) -> Result<Self, HomeError> {
        Self::open_for(path, Access::Exclusive, false)
    }

    /// Locks, reads and opens the home at `path` for `access`. With `wait`,
    /// waits for a process that holds it in a way `access` cannot share;
    /// without, fails with [`HomeError::Locked`].
    pub fn open_for(path: &Path, access: Access, wait: bool) -> Result<Self, HomeError> {
        let lock = HomeLock::take(path, access, wait)?;
        let keys = Keys::load(path)?;
        let config = Config::load(path)?;
        let patience = if wait { Duration::MAX } else { crate::store::DEFAULT_PATIENCE };
        let sharing = match access {
            Access::Read => Sharing::ReadOnly { patience },
            Access::Add => Sharing::Shared { patience },
            Access::Exclusive => Sharing::Exclusive,
        };
        let store = Store::open_with(&path.join("store"), sharing)?;
        Ok(Self { path: path.to_owned(), keys, config, store, _lock: lock })
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The home's `lock` file, flocked: shared by readers and adders,
/// exclusive for a process that must be alone. An exclusive holder writes
/// its pid in it (for the message others get) and clears it when done.
struct HomeLock {
    file: File,
    exclusive: bool,
}

impl HomeLock {
    /// Takes the lock for `access`. A reader on a disk where the lock file
    /// cannot be opened (a read-only backup disk) reads without one: no
    /// process can write there either.
    fn take(home: &Path, access: Access, wait: bool) -> Result<Option<Self>, HomeError> {
        let path = home.join("lock");
        let opened = match access {
            Access::Read => OpenOptions::new().read(true).open(&path),
            Access::Add | Access::Exclusive => {
                OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)
            }
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(_) if access == Access::Read => return Ok(None),
            Err(e) => return Err(io_err("opening lock file", &path)(e)),
        };
        let exclusive = access == Access::Exclusive;
        let taken = match (exclusive, wait) {
            (true, false) => file.try_lock(),
            (false, false) => file.try_lock_shared(),
            (true, true) => file.lock().map_err(fs::TryLockError::Error),
            (false, true) => file.lock_shared().map_err(fs::TryLockError::Error),
        };
        match taken {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(HomeError::Locked { path: home.to_owned(), holder });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &path)(e)),
        }
        if exclusive {
            // Only for others' messages: on a full disk (where `gc` is what
            // the user needs) the lock holds without it.
            let _ = file.set_len(0).and_then(|()| write!(file, "{}", std::process::id()));
        }
        Ok(Some(Self { file, exclusive }))
    }
}

impl Drop for HomeLock {
    fn drop(&mut self) {
        if self.exclusive {
            let _ = self.file.set_len(0);
        }
    }
}

fn read_key(path: &Path) -> Result<[u8; KEY_LEN], HomeError> {
    let file = File::open(path).map_err(io_err("opening key file", path))?;
    let mode = file.metadata().map_err(io_err("reading key file metadata", path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(HomeError::KeyPermissions { path: path.to_owned(), mode: mode & 0o777 });
    }
    let mut text = String::new();
    file.take(256).read_to_string(&mut text).map_err(|_| HomeError::KeyMalformed(path.to_owned()))?;
    id::key_from_hex(&text).ok_or_else(|| HomeError::KeyMalformed(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_keeps_keys() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        assert_eq!(init(&home).unwrap(), InitOutcome::Created);
        let owner_before = fs::read(home.join("keys/owner.key")).unwrap();
        assert_eq!(init(&home).unwrap(), InitOutcome::AlreadyInitialised);
        assert_eq!(fs::read(home.join("keys/owner.key")).unwrap(), owner_before);
        for name in KEY_NAMES {
            let mode = fs::metadata(home.join("keys").join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let opened = Home::open(&home).unwrap();
        assert_eq!(opened.config(), &Config::default());
    }

    #[test]
    fn readable_key_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let key = dir.path().join("keys/owner.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Home::open(dir.path()).err().expect("a readable key must be refused");
        assert!(matches!(err, HomeError::KeyPermissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn second_process_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let _first = Home::open(dir.path()).unwrap();
        let err = Home::open(dir.path()).err().expect("the home is locked");
        assert!(matches!(err, HomeError::Locked { .. }), "{err}");
    }

    #[test]
    fn default_config_text_parses_to_the_defaults() {
        let config: Config = toml::from_str(&default_config_text()).unwrap();
        assert_eq!(config, Config::default());
    }
}
