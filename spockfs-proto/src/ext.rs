//! The extensions: their names as a server advertises them in
//! `X-Spock-extensions` (OPTIONS) and as a client detects them.

use http::HeaderMap;

/// `errno`: `X-Spock-errno` on error responses.
pub const ERRNO: &str = "errno";
/// `readdir-attrs`: READDIR with `X-Spock-readdir: attrs`.
pub const READDIR_ATTRS: &str = "readdir-attrs";
/// `fsync`: the `FSYNC` method.
pub const FSYNC: &str = "fsync";
/// `stat`: `X-Spock-stat: 1` on a change answers with the entry's
/// attributes.
pub const STAT: &str = "stat";
/// `parent-stat`: a change that adds or removes a name also answers with
/// its directory's attributes (`X-Spock-parent`).
pub const PARENT_STAT: &str = "parent-stat";
/// `nsec`: nanosecond times in attributes, `X-Spock-readdir: attrs-nsec`,
/// and UTIMENS with nanoseconds, `now` and `omit`.
pub const NSEC: &str = "nsec";
/// `identity`: the server acts as the client's `X-Spock-caller`.
pub const IDENTITY: &str = "identity";

/// The extensions this server speaks, as advertised in
/// `X-Spock-extensions` by OPTIONS.
pub const EXTENSIONS: &str = "errno, readdir-attrs, fsync, stat, parent-stat, nsec";

/// [`EXTENSIONS`] plus `identity` (the client's `X-Spock-caller` is
/// believed), as OPTIONS advertises them on mounts that trust their
/// clients' identities.
pub const EXTENSIONS_WITH_IDENTITY: &str =
    "errno, readdir-attrs, fsync, stat, parent-stat, nsec, identity";

/// The extensions a server advertised in `OPTIONS`.
///
/// ```
/// use spockfs_proto::ext::{Extensions, EXTENSIONS};
/// let e = Extensions::parse(EXTENSIONS);
/// assert!(e.errno && e.nsec && !e.identity);
/// assert_eq!(Extensions::parse("fsync ,bogus"), Extensions { fsync: true, ..Extensions::default() });
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `X-Spock-errno` on errors.
    pub errno: bool,
    /// `READDIR` with `X-Spock-readdir: attrs`.
    pub readdir_attrs: bool,
    /// The `FSYNC` method.
    pub fsync: bool,
    /// `X-Spock-stat: 1`: calls that create or change an entry answer with
    /// its attributes.
    pub stat: bool,
    /// `X-Spock-caller`: the server acts as the identity the client
    /// declares (it trusts this client's ids).
    pub identity: bool,
    /// `X-Spock-parent`: a call that adds or removes a name answers with
    /// its directory's attributes too.
    pub parent_stat: bool,
    /// Nanosecond times: `X-Spock-*time-nsec` in attributes,
    /// `X-Spock-readdir: attrs-nsec`, and UTIMENS with nanoseconds, `now`
    /// and `omit`.
    pub nsec: bool,
}

impl Extensions {
    /// The extensions named in a comma-separated list (the value of
    /// `X-Spock-extensions`); unknown names are ignored.
    pub fn parse(list: &str) -> Extensions {
        let has = |x: &str| list.split(',').any(|e| e.trim() == x);
        Extensions {
            errno: has(ERRNO),
            readdir_attrs: has(READDIR_ATTRS),
            fsync: has(FSYNC),
            stat: has(STAT),
            identity: has(IDENTITY),
            parent_stat: has(PARENT_STAT),
            nsec: has(NSEC),
        }
    }

    /// The extensions an `OPTIONS` response advertises in
    /// `X-Spock-extensions` (none if absent or not text).
    pub fn from_headers(h: &HeaderMap) -> Extensions {
        let list = h
            .get(&crate::headers::X_SPOCK_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Extensions::parse(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advertised lists are exactly the named extensions, so what the
    /// server says and what the client looks for cannot drift apart.
    #[test]
    fn advertised_lists_are_the_named_extensions() {
        let all = [ERRNO, READDIR_ATTRS, FSYNC, STAT, PARENT_STAT, NSEC];
        assert_eq!(EXTENSIONS.split(", ").collect::<Vec<_>>(), all);
        let mut with_id = all.to_vec();
        with_id.push(IDENTITY);
        assert_eq!(
            EXTENSIONS_WITH_IDENTITY.split(", ").collect::<Vec<_>>(),
            with_id
        );
        let e = Extensions::parse(EXTENSIONS);
        assert!(e.errno && e.readdir_attrs && e.fsync && e.stat && e.parent_stat && e.nsec);
        assert!(!e.identity);
        assert!(Extensions::parse(EXTENSIONS_WITH_IDENTITY).identity);
    }
}
