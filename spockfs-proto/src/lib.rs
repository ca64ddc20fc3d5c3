//! # spockfs-proto
//!
//! The SpockFS 0.1 wire protocol, as both ends of a connection speak it: a
//! POSIX filesystem in plain HTTP, one request per call, attributes in
//! `X-Spock-*` headers. No engine, no thread pool, no storage backend and
//! no async runtime: a server (`spockfs-core`) and a client
//! (`spockfs-client`) each depend on this crate, so every encoder here has
//! its decoder next to it.
//!
//! - [`method`]: the methods and the `Allow` list;
//! - [`ext`]: the extension names (OPTIONS' `X-Spock-extensions`);
//! - [`errno`]: `errno` values and their HTTP statuses;
//! - [`path`]: how paths are written into URLs and validated;
//! - [`stat`]: the attributes the protocol carries;
//! - [`headers`]: typed `X-Spock-*` headers, with one encode/decode pair
//!   for stat, statfs and parent-stat;
//! - [`range`]: `Range` and `Content-Range` as SpockFS reads them;
//! - [`readdir`]: the READDIR body in all its forms;
//! - [`spin`]: the idle-polling window shared by the server's pool and the
//!   mount's event loop.
//!
//! Feature `rustix` (off by default) adds `From<rustix::io::Errno>` for
//! [`Errno`].
#![warn(missing_docs)]

pub mod errno;
pub mod ext;
pub mod headers;
pub mod method;
pub mod path;
pub mod range;
pub mod readdir;
pub mod spin;
pub mod stat;

pub use errno::{Errno, FsResult};
pub use ext::Extensions;
pub use method::Method;
pub use path::{FsPath, PathError};
pub use stat::{SetTime, Stat, StatFs, XattrFlag};
