//! How a mount behaves: [`MountConfig`] and its defaults.

use std::time::Duration;

/// How a mount behaves.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Refuse every change with `EROFS` (and mount `ro`).
    pub read_only: bool,
    /// How long the kernel may cache attributes (and the xattr negative
    /// cache lives).
    pub attr_timeout: Duration,
    /// How long the kernel may cache names.
    pub entry_timeout: Duration,
    /// Let other users than the mounting one in (`allow_other`).
    pub allow_other: bool,
    /// Name shown in `/proc/mounts` (the URL without credentials).
    pub fsname: String,
    /// FUSE event-loop threads (each with its own `/dev/fuse` descriptor,
    /// runtime and connections; each serves any number of requests at
    /// once).
    pub threads: usize,
    /// Let the kernel check permissions against the mode, owner and group
    /// the server reports, for the local caller (`default_permissions`),
    /// as for a local disk. Default: `true`.
    pub default_permissions: bool,
    /// Send each caller's uid, gid and groups (`X-Spock-caller`) when the
    /// server speaks the `identity` extension, so that it acts as that
    /// user: new files belong to it and the server checks its permissions
    /// too. Default: `true`.
    pub send_ids: bool,
    /// Close-to-open caching: keep a file's cached pages across opens while
    /// the server shows it unchanged (size, mtime, ctime to the nanosecond,
    /// checked by every open). Off: every open drops them. Default: `true`.
    pub keep_cache: bool,
    /// The kernel's writeback cache (`FUSE_WRITEBACK_CACHE`): writes land
    /// in the page cache and go to the server gathered into large PUTs
    /// (at the latest at `close()` or `fsync()`, which then report any
    /// write error, as on NFS). Default: `false`, because the kernel then
    /// trusts its own size and mtime of a cached file over the server's:
    /// a file another client grows or shrinks keeps the size this mount
    /// last knew for as long as the kernel keeps its inode (the
    /// close-to-open guarantee is lost for such files). Only for a mount
    /// that is the sole writer of the files it caches.
    pub writeback_cache: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            read_only: false,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            allow_other: false,
            fsname: "spockfs".into(),
            threads: 1,
            default_permissions: true,
            send_ids: true,
            keep_cache: true,
            writeback_cache: false,
        }
    }
}
