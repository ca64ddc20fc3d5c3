//! [`SpockFuse`], the fuser adapter: decodes each kernel request, awaits
//! the [`MountFs`] method that serves it (as a task on the thread's event
//! loop, as the request's caller) and replies; nothing else.

use super::{as_caller, event_loop, Entry, MountConfig, MountFs, SetAttr};
use bytes::Bytes;
use fuser::{
    AccessFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use spockfs_client::{Client, Errno, SetTime, Stat};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The FUSE filesystem: a [`MountFs`] served through fuser; see the
/// [module documentation](super).
#[derive(Clone)]
pub struct SpockFuse {
    fs: Arc<MountFs>,
    /// Read-only requests in flight, by FUSE request id: sending cancels
    /// one (`FUSE_INTERRUPT`).
    inflight: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>>,
}

impl std::fmt::Debug for SpockFuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpockFuse").finish_non_exhaustive()
    }
}

fn to_time(secs: i64, nsec: u32) -> SystemTime {
    let base = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    base + Duration::from_nanos(u64::from(nsec.min(999_999_999)))
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr_of(ino: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.size,
        blocks: st.blocks,
        atime: to_time(st.atime, st.atime_nsec),
        mtime: to_time(st.mtime, st.mtime_nsec),
        ctime: to_time(st.ctime, st.ctime_nsec),
        crtime: to_time(st.ctime, st.ctime_nsec),
        kind: kind_of(st.mode),
        perm: (st.mode & 0o7777) as u16,
        nlink: st.nlink as u32,
        uid: st.uid,
        gid: st.gid,
        rdev: st.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn fe(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw())
}

/// A time of a FUSE setattr as UTIMENS sets it: absent is `UTIME_OMIT`,
/// the kernel's "now" `UTIME_NOW` (the server's clock, and its permission
/// rule: `touch` by a non-owner with write access).
fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    Some(match t? {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At {
                sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                // Before 1970: seconds rounded down, nanoseconds up from them.
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), 0);
                if d.subsec_nanos() > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - d.subsec_nanos();
                }
                SetTime::At { sec, nsec }
            }
        },
    })
}

/// Answers an entry, or a negative one (ino 0: the kernel remembers the
/// name is absent for `ttl`).
fn reply_entry(reply: ReplyEntry, ttl: Duration, r: Result<Option<Entry>, Errno>) {
    match r {
        Ok(Some(e)) => reply.entry(&ttl, &attr_of(e.ino, &e.stat), Generation(0)),
        Ok(None) => reply.entry(&ttl, &attr_of(0, &Stat::default()), Generation(0)),
        Err(e) => reply.error(fe(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fe(e)),
    }
}

/// Answers an xattr value or name list: its size if asked with size 0,
/// `ERANGE` if it does not fit `size`.
fn reply_sized(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(data.len() as u32)
    } else if data.len() > size as usize {
        reply.error(fuser::Errno::ERANGE)
    } else {
        reply.data(data)
    }
}

/// A reply that can answer an error (every fuser reply type).
trait Interruptible {
    fn error(self, e: fuser::Errno);
}

macro_rules! interruptible {
    ($($t:ty),*) => {$(
        impl Interruptible for $t {
            fn error(self, e: fuser::Errno) {
                <$t>::error(self, e)
            }
        }
    )*};
}

interruptible!(
    ReplyEntry,
    ReplyAttr,
    ReplyData,
    ReplyOpen,
    ReplyStatfs,
    ReplyXattr,
    ReplyEmpty
);

impl SpockFuse {
    /// A filesystem over `client` (each FUSE thread takes a connection pool
    /// of its own from it).
    pub fn new(client: Client, cfg: MountConfig) -> Self {
        SpockFuse {
            fs: Arc::new(MountFs::new(client, cfg)),
            inflight: Arc::default(),
        }
    }

    /// The filesystem it serves.
    pub fn fs(&self) -> &Arc<MountFs> {
        &self.fs
    }

    /// Starts a request as a task on this FUSE thread's event loop, as the
    /// request's caller: it runs while the loop reads more requests.
    fn run<F>(&self, req: &Request, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let caller = self.fs.caller(req.uid(), req.gid(), req.pid());
        event_loop::spawn(as_caller(caller, f));
    }

    /// Runs `fut` for a request that changes nothing, then `done` with its
    /// result; if the kernel interrupts the request first (the caller got a
    /// signal), the HTTP call is dropped and the request answered `EINTR`.
    /// Calls that change something are never cancelled: once sent, their
    /// outcome on the server is unknown until the answer arrives.
    fn run_ro<R, T, F>(
        &self,
        req: &Request,
        reply: R,
        fut: F,
        done: impl FnOnce(R, T) + Send + 'static,
    ) where
        R: Interruptible + Send + 'static,
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let id = req.unique().0;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let inflight = self.inflight.clone();
        self.run(req, async move {
            tokio::select! {
                r = fut => done(reply, r),
                Ok(()) = rx => {
                    tracing::debug!(request = id, "interrupted: cancelled");
                    reply.error(fuser::Errno::EINTR)
                }
            }
            inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// Runs `f`, a call that creates a name, and answers its entry (or
    /// error) with the entry timeout.
    fn run_entry<F>(&self, req: &Request, reply: ReplyEntry, f: F)
    where
        F: std::future::Future<Output = Result<Entry, Errno>> + Send + 'static,
    {
        let ttl = self.fs.config().entry_timeout;
        self.run(
            req,
            async move { reply_entry(reply, ttl, f.await.map(Some)) },
        );
    }

    /// Runs `f` and answers success or its error.
    fn run_empty<F>(&self, req: &Request, reply: ReplyEmpty, f: F)
    where
        F: std::future::Future<Output = Result<(), Errno>> + Send + 'static,
    {
        self.run(req, async move { reply_empty(reply, f.await) });
    }
}

/// Open files need no FLUSH at close: the mount buffers nothing (each
/// WRITE is a PUT before it is answered) and locks are local, so the
/// kernel is told to skip the round trip (`FOPEN_NOFLUSH`, Linux 5.15+;
/// older kernels ignore it and send FLUSH, answered at once). With
/// `--writeback-cache` the kernel ignores it: it writes its dirty pages
/// back at close, then sends the FLUSH.
const NO_FLUSH: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

impl Filesystem for SpockFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mb = 1 << 20;
        let _ = config
            .set_max_write(mb)
            .or_else(|m| config.set_max_write(m));
        let _ = config
            .set_max_readahead(mb)
            .or_else(|m| config.set_max_readahead(m));
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        for f in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
            // Writes, truncation and chown clear set-ID bits on the server,
            // as its kernel decides for the caller's identity: the kernel
            // here must not turn them into a chmod, which a writer who is
            // not the owner may not do.
            InitFlags::FUSE_HANDLE_KILLPRIV,
        ] {
            let _ = config.add_capabilities(f);
        }
        if self.fs.config().writeback_cache {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        // SpockFS 0.1 times are whole seconds; with the `nsec` extension
        // the kernel passes times on (utimensat) to the nanosecond.
        let gran = if self.fs.server_extensions().nsec {
            Duration::from_nanos(1)
        } else {
            Duration::from_secs(1)
        };
        let _ = config.set_time_granularity(gran);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ttl = self.fs.config().entry_timeout;
        if let Some(r) = self.fs.lookup_cached(parent.0, name.as_bytes()) {
            return reply_entry(reply, ttl, r);
        }
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        self.run_ro(
            req,
            reply,
            async move { fs.lookup(parent.0, &name).await },
            move |reply, r| reply_entry(reply, ttl, r),
        );
    }

    fn session_loop(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        step: &mut dyn FnMut() -> std::io::Result<fuser::Step>,
    ) -> std::io::Result<()> {
        event_loop::run(fd, step, || self.fs.use_own_pool())
    }

    fn interrupt(&self, _req: &Request, unique: fuser::RequestId) {
        // Unknown ids finished already, or change something: ignored.
        let tx = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&unique.0);
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some((st, ttl)) = self.fs.getattr_cached(ino.0) {
            return reply.attr(&ttl, &attr_of(ino.0, &st));
        }
        let fs = self.fs.clone();
        self.run_ro(
            req,
            reply,
            async move { fs.getattr(ino.0).await },
            move |reply, r| match r {
                Ok((st, ttl)) => reply.attr(&ttl, &attr_of(ino.0, &st)),
                Err(e) => reply.error(fe(e)),
            },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let fs = self.fs.clone();
        self.run(req, async move {
            match fs.setattr(ino.0, set).await {
                Ok(st) => reply.attr(&fs.config().attr_timeout, &attr_of(ino.0, &st)),
                Err(e) => reply.error(fe(e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.run_ro(
            req,
            reply,
            async move { fs.readlink(ino.0).await },
            |reply, r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(fe(e)),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.run_entry(req, reply, async move {
            fs.mknod(parent.0, &name, mode, rdev).await
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.run_entry(
            req,
            reply,
            async move { fs.mkdir(parent.0, &name, mode).await },
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.run_empty(req, reply, async move { fs.unlink(parent.0, &name).await });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.run_empty(req, reply, async move { fs.rmdir(parent.0, &name).await });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (fs, name) = (self.fs.clone(), link_name.as_bytes().to_vec());
        let target = target.as_os_str().as_bytes().to_vec();
        self.run_entry(req, reply, async move {
            fs.symlink(parent.0, &name, &target).await
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let newname = newname.as_bytes().to_vec();
        self.run_empty(req, reply, async move {
            fs.rename(parent.0, &name, newparent.0, &newname, flags.bits())
                .await
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (fs, name) = (self.fs.clone(), newname.as_bytes().to_vec());
        self.run_entry(req, reply, async move {
            fs.link(ino.0, newparent.0, &name).await
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.run_ro(
            req,
            reply,
            async move { fs.open(ino.0, flags.0).await },
            |reply, r| match r {
                Ok((fh, true)) => {
                    reply.opened(FileHandle(fh), NO_FLUSH | FopenFlags::FOPEN_KEEP_CACHE)
                }
                Ok((fh, false)) => reply.opened(FileHandle(fh), NO_FLUSH),
                Err(e) => reply.error(fe(e)),
            },
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.run(req, async move {
            match fs.create(parent.0, &name, mode).await {
                Ok((e, fh)) => reply.created(
                    &fs.config().entry_timeout,
                    &attr_of(e.ino, &e.stat),
                    Generation(0),
                    FileHandle(fh),
                    NO_FLUSH,
                ),
                Err(e) => reply.error(fe(e)),
            }
        });
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Decided now, as the request is read: an rmdir read after this
        // release waits for the hidden name to go.
        let Some(released) = self.fs.release(fh.0) else {
            return reply.ok();
        };
        let fs = self.fs.clone();
        self.run_empty(req, reply, async move { fs.finish_release(released).await });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.run_ro(
            req,
            reply,
            async move { fs.read(ino.0, offset, size).await },
            |reply, r| match r {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(fe(e)),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fs = self.fs.clone();
        let data = Bytes::copy_from_slice(data);
        self.run(req, async move {
            match fs.write(ino.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(fe(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered here (with the writeback cache the kernel
        // has sent its dirty pages as WRITEs before this FLUSH).
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.run_empty(req, reply, async move { fs.fsync(ino.0, datasync).await });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let opened = |reply: ReplyOpen, r: Result<u64, Errno>| match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fe(e)),
        };
        if let Some(r) = self.fs.opendir_cached(ino.0) {
            return opened(reply, r);
        }
        let fs = self.fs.clone();
        self.run_ro(req, reply, async move { fs.opendir(ino.0).await }, opened);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(ino.0, fh.0, offset, |e| {
            let name = OsStr::from_bytes(e.name);
            reply.add(INodeNo(e.ino), e.offset, kind_of(e.stat.mode), name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        self.run(req, async move {
            let r = fs
                .readdirplus(ino.0, fh.0, offset, |e| {
                    let name = OsStr::from_bytes(e.name);
                    let attr = attr_of(e.ino, &e.stat);
                    reply.add(INodeNo(e.ino), e.offset, name, &e.ttl, &attr, Generation(0))
                })
                .await;
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fe(e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let fs = self.fs.clone();
        self.run_ro(
            req,
            reply,
            async move { fs.statfs(ino.0).await },
            |reply, r| match r {
                Ok(f) => reply.statfs(
                    f.blocks,
                    f.bfree,
                    f.bavail,
                    f.files,
                    f.ffree,
                    f.bsize as u32,
                    f.namemax as u32,
                    f.frsize as u32,
                ),
                Err(e) => reply.error(fe(e)),
            },
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let value = Bytes::copy_from_slice(value);
        self.run_empty(req, reply, async move {
            fs.setxattr(ino.0, &name, value, flags).await
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.fs.xattr_known_absent(ino.0, name.as_bytes()) {
            return reply.error(fuser::Errno::NO_XATTR);
        }
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.run_ro(
            req,
            reply,
            async move { fs.getxattr(ino.0, &name).await },
            move |reply, r| match r {
                Ok(v) => reply_sized(reply, &v, size),
                Err(e) => reply.error(fe(e)),
            },
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fs = self.fs.clone();
        self.run_ro(
            req,
            reply,
            async move { fs.listxattr(ino.0).await },
            move |reply, r| match r {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    reply_sized(reply, &buf, size)
                }
                Err(e) => reply.error(fe(e)),
            },
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.run_empty(
            req,
            reply,
            async move { fs.removexattr(ino.0, &name).await },
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.run_ro(
            req,
            reply,
            async move { fs.access(ino.0, mask.bits()).await },
            reply_empty,
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.run_empty(req, reply, async move {
            fs.fallocate(ino.0, offset, length, mode).await
        });
    }
}
