//! `MemFs`: an in-memory filesystem (being written).
/// In-memory backend.
#[derive(Debug, Clone, Default)]
pub struct MemFs {}
