//! The attributes SpockFS carries: `stat` ([`Stat`]), `statvfs`
//! ([`StatFs`]), UTIMENS's times ([`SetTime`]) and SETXATTR's flag
//! ([`XattrFlag`]), as both ends of a connection see them.

use crate::errno::{Errno, FsResult};

/// `stat` attributes of an object, as sent by GETATTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// `st_nlink`.
    pub nlink: u64,
    /// `st_uid`.
    pub uid: u32,
    /// `st_gid`.
    pub gid: u32,
    /// `st_rdev` (not part of SpockFS 0.1's GETATTR).
    pub rdev: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_blocks` (512-byte units).
    pub blocks: u64,
    /// `st_atime`, unix seconds (rounded down: `atime_nsec` is added).
    pub atime: i64,
    /// `st_mtime`, unix seconds (rounded down: `mtime_nsec` is added).
    pub mtime: i64,
    /// `st_ctime`, unix seconds (rounded down: `ctime_nsec` is added).
    pub ctime: i64,
    /// Nanoseconds of `st_atime` (0 to 999 999 999; extension `nsec`).
    pub atime_nsec: u32,
    /// Nanoseconds of `st_mtime` (0 to 999 999 999; extension `nsec`).
    pub mtime_nsec: u32,
    /// Nanoseconds of `st_ctime` (0 to 999 999 999; extension `nsec`).
    pub ctime_nsec: u32,
}

/// File type bits of `st_mode`.
pub mod mode {
    /// `S_IFMT`
    pub const S_IFMT: u32 = 0o170000;
    /// `S_IFREG`
    pub const S_IFREG: u32 = 0o100000;
    /// `S_IFDIR`
    pub const S_IFDIR: u32 = 0o040000;
    /// `S_IFLNK`
    pub const S_IFLNK: u32 = 0o120000;
    /// `S_IFIFO`
    pub const S_IFIFO: u32 = 0o010000;
    /// `S_IFSOCK`
    pub const S_IFSOCK: u32 = 0o140000;
    /// `S_IFCHR`
    pub const S_IFCHR: u32 = 0o020000;
    /// `S_IFBLK`
    pub const S_IFBLK: u32 = 0o060000;
    /// `S_IWUSR`
    pub const S_IWUSR: u32 = 0o200;
    /// `S_ISUID`
    pub const S_ISUID: u32 = 0o4000;
    /// `S_ISGID`
    pub const S_ISGID: u32 = 0o2000;
    /// Permission bits including setuid/setgid/sticky.
    pub const PERMS: u32 = 0o7777;
}

impl Stat {
    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & mode::S_IFMT == mode::S_IFDIR
    }
    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & mode::S_IFMT == mode::S_IFREG
    }
    /// True for a symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode & mode::S_IFMT == mode::S_IFLNK
    }
}

/// `statvfs` of the filesystem holding an object, as sent by STATFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    /// `f_bsize`
    pub bsize: u64,
    /// `f_frsize`
    pub frsize: u64,
    /// `f_blocks`
    pub blocks: u64,
    /// `f_bfree`
    pub bfree: u64,
    /// `f_bavail`
    pub bavail: u64,
    /// `f_files`
    pub files: u64,
    /// `f_ffree`
    pub ffree: u64,
    /// `f_favail`
    pub favail: u64,
    /// `f_fsid`
    pub fsid: u64,
    /// `f_flag`
    pub flag: u64,
    /// `f_namemax`
    pub namemax: u64,
}

/// A time UTIMENS sets (one of `utimensat`'s two `timespec`s).
///
/// The choice matters for permissions, as in `utimensat(2)`: setting both
/// times to [`Now`](SetTime::Now) needs ownership *or write access*; any
/// other combination that changes something needs ownership (or
/// `CAP_FOWNER`); both [`Omit`](SetTime::Omit) changes nothing and checks
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// `UTIME_NOW`: the current time.
    Now,
    /// `UTIME_OMIT`: left unchanged.
    Omit,
    /// An explicit time.
    At {
        /// Unix seconds.
        sec: i64,
        /// Nanoseconds, 0 to 999 999 999.
        nsec: u32,
    },
}

impl SetTime {
    /// An explicit time in whole seconds (what a SpockFS 0.1 UTIMENS sets).
    pub fn secs(sec: i64) -> SetTime {
        SetTime::At { sec, nsec: 0 }
    }

    /// False for an explicit time whose nanoseconds are 10⁹ or more
    /// (`EINVAL`).
    pub fn is_valid(self) -> bool {
        match self {
            SetTime::At { nsec, .. } => nsec < 1_000_000_000,
            _ => true,
        }
    }
}

/// How SETXATTR treats an existing attribute (`X-Spock-flag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrFlag {
    /// 0: create or replace.
    Any,
    /// 1, `XATTR_CREATE`: fail with `EEXIST` if it exists.
    Create,
    /// 2, `XATTR_REPLACE`: fail with `ENODATA` if it does not.
    Replace,
}

impl XattrFlag {
    /// From the wire value; anything but 0, 1, 2 is `EINVAL`.
    pub fn from_wire(v: i64) -> FsResult<XattrFlag> {
        match v {
            0 => Ok(XattrFlag::Any),
            1 => Ok(XattrFlag::Create),
            2 => Ok(XattrFlag::Replace),
            _ => Err(Errno::EINVAL),
        }
    }

    /// The wire value, `X-Spock-flag` of SETXATTR.
    ///
    /// ```
    /// use spockfs_proto::XattrFlag;
    /// for f in [XattrFlag::Any, XattrFlag::Create, XattrFlag::Replace] {
    ///     assert_eq!(XattrFlag::from_wire(f.to_wire()), Ok(f));
    /// }
    /// ```
    pub fn to_wire(self) -> i64 {
        match self {
            XattrFlag::Any => 0,
            XattrFlag::Create => 1,
            XattrFlag::Replace => 2,
        }
    }
}
