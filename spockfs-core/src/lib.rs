//! # spockfs-core
//!
//! The SpockFS 0.1 protocol and its engine, independent of any HTTP
//! framework: everything a request means is decided here, once, so that the
//! adapters (`spockfs-tower`, `spockfs-pingora`) stay thin.
#![warn(missing_docs)]

pub mod backend;
mod body;
pub mod engine;
pub mod errno;
pub mod headers;
pub mod identity;
pub mod listing;
pub mod method;
pub mod mount;
pub mod path;
pub mod pool;
mod reaper;
pub mod route;
pub mod sites;

pub use body::SpockBody;
pub use engine::{error_response, BoxError, Engine, EngineBuilder, Limiter, Limits, Op};
pub use method::Method;
pub use mount::{Mount, MountTable, Policy};
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
