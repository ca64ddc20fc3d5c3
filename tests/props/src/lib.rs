//! # spockfs-props
//!
//! The properties behind the fuzz targets, in one place: each `check_*`
//! function takes arbitrary bytes and panics if a property fails. The
//! cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) call them with what
//! libFuzzer generates; the stable tests in `tests/corpus.rs` call the very
//! same functions on every file of `fuzz/corpus/<target>/` plus random
//! inputs from proptest, so CI runs the same properties without nightly.
//!
//! | target         | property                                                     |
//! |----------------|--------------------------------------------------------------|
//! | `path`         | path decoding/sanitizing: accepted paths are clean and round-trip through the client's encoder |
//! | `headers`      | every typed `X-Spock-*` header and the engine's request parser |
//! | `range`        | `Range` / `Content-Range`: resolved ranges stay in the file, canonical forms round-trip |
//! | `listing`      | `readdir-attrs` writer/parser round trip, both listing formats |
//! | `client`       | the client's response parsers (listings, xattr lists, stat headers, errno, extensions) |
//! | `engine_mem`   | whole requests on a `MemFs`: no panic, well-formed responses |
//! | `engine_local` | whole requests on a `LocalFs`: also, nothing outside the root changes |

#![warn(missing_docs)]

pub mod engine;
pub mod input;
pub mod parsers;

pub use engine::{check_engine_local, check_engine_mem};
pub use parsers::{check_client, check_headers, check_listing, check_path, check_range};

/// A property: panics if it does not hold for the input.
pub type Property = fn(&[u8]);

/// Every target: its name (the directory under `fuzz/corpus/`) and its
/// property.
pub const TARGETS: &[(&str, Property)] = &[
    ("path", check_path),
    ("headers", check_headers),
    ("range", check_range),
    ("listing", check_listing),
    ("client", check_client),
    ("engine_mem", check_engine_mem),
    ("engine_local", check_engine_local),
];
