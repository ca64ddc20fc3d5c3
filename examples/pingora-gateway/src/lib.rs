//! A Pingora edge gateway with SpockFS built in.
//!
//! - **local vhosts** are answered in-process by [`spockfs_pingora::SpockFsModule`]
//!   (LocalFs or MemFs, read-only or not, whole host or under a prefix);
//! - **pool vhosts** are proxied to upstream SpockFS nodes, round robin,
//!   with active health checks; a request is retried on another node only
//!   if it never reached the first one (connect failure) or if it is a
//!   read that changes nothing (GETATTR, READDIR, GET, …);
//! - **everything else** goes to the default upstream, untouched — except
//!   the identity headers a client may not set ([`Config::strip_request_headers`],
//!   `X-Remote-User` and its kin by default), removed from every request
//!   before anything sees it.
//!
//! Configured by a TOML file ([`Config`]); see `gateway.example.toml`.

mod config;
mod listen;
mod metrics;
mod proxy;
mod server;

pub use config::{
    Config, ConfigError, LimitSettings, Listener, MetricsSettings, ServerSettings, Vhost,
};
pub use listen::{GuardedApp, GuardedStream};
pub use proxy::{Ctx, Gateway};
pub use server::{build, build_with, run_in_background, run_in_background_with, Built, Running};
