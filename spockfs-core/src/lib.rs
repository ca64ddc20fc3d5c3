//! # spockfs-core
//!
//! The SpockFS 0.1 protocol and its engine, independent of any HTTP
//! framework: everything a request means is decided here, once, so that the
//! adapters (`spockfs-tower`, `spockfs-pingora`) stay thin.
#![warn(missing_docs)]

pub mod backend;
mod body;
pub mod engine;
pub mod identity;
pub mod mount;
pub mod observe;
pub mod pool;
mod reaper;
pub mod route;
pub mod sites;

// The wire protocol lives in spockfs-proto (shared with the client); its
// modules keep their old paths here.
pub use spockfs_proto::readdir as listing;
pub use spockfs_proto::{errno, headers, method, path};

pub use body::SpockBody;
pub use engine::{error_response, BoxError, Engine, EngineBuilder, Limiter, Limits, Op};
pub use method::Method;
pub use mount::{Mount, MountTable, Policy, PolicySettings, UnknownUser, UserSetting};
pub use route::{Hosts, Routes};

pub use backend::local::LocalFs;
pub use backend::mem::MemFs;
pub use backend::{
    Backend, CollectedDir, Devices, DirStream, FileHandle, Owner, Replacement, SetId, SetTime,
    Stat, StatFs, XattrFlag,
};
pub use errno::{Errno, FsResult};
pub use identity::{ClientIds, Identity};
pub use path::{FsPath, PathError};
