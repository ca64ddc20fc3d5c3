//! Mounting and unmounting: the fuser session options, [`spawn_mount`]
//! and its [`Mounted`] guard, [`unmount`], the readahead raise, and
//! unmounting on SIGINT/SIGTERM.

use super::{MountConfig, SpockFuse};
use spockfs_client::Client;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

impl SpockFuse {
    /// The fuser session options for this filesystem.
    pub fn fuser_config(&self) -> fuser::Config {
        let cfg = self.fs().config();
        use fuser::MountOption as O;
        let mut c = fuser::Config::default();
        c.mount_options = vec![
            O::FSName(cfg.fsname.clone()),
            O::Subtype("spockfs".into()),
            if cfg.read_only { O::RO } else { O::RW },
            O::NoDev,
            O::NoSuid,
        ];
        if cfg.default_permissions {
            c.mount_options.push(O::DefaultPermissions);
        }
        if cfg.allow_other {
            c.acl = fuser::SessionACL::All;
        }
        if cfg!(target_os = "linux") {
            c.n_threads = Some(cfg.threads.max(1));
            // One /dev/fuse descriptor per thread.
            c.clone_fd = true;
        }
        c
    }
}

/// A mounted filesystem running in the background; unmounted on drop (or
/// with [`Mounted::unmount`]).
#[derive(Debug)]
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

/// Raises the kernel's readahead for the mount at `mountpoint` to 1 MiB
/// (the FUSE connection is capped at the block layer's default of 128 KiB
/// otherwise), through `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`. Needs
/// root; best effort: `false` if it could not be set. Stats the mount
/// point, so the session must already be serving.
pub fn raise_readahead(mountpoint: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(m) = std::fs::metadata(mountpoint) else {
        return false;
    };
    let dev = m.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(bdi, b"1024").is_ok()
}

/// Unmounts `mountpoint`: `umount(2)` as root, `fusermount3 -u` otherwise;
/// retried for up to 5 s while busy (a `close` just before may still be
/// releasing), then detached lazily. `Ok(true)` if it was detached lazily.
pub fn unmount(mountpoint: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let fusermount = |lazy: bool| {
        let mut cmd = std::process::Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        cmd.arg("--")
            .arg(mountpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let t = Instant::now();
    loop {
        // SAFETY: `c` is a valid NUL-terminated path.
        let r = unsafe { libc::umount2(c.as_ptr(), 0) };
        let err = std::io::Error::last_os_error();
        match (r, err.raw_os_error()) {
            (0, _) => return Ok(false),
            // Not (or no longer) a mount point.
            (_, Some(libc::EINVAL)) | (_, Some(libc::ENOENT)) => return Ok(false),
            (_, Some(libc::EPERM)) if fusermount(false) => return Ok(false),
            (_, Some(libc::EBUSY)) | (_, Some(libc::EPERM))
                if t.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break,
        }
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 || fusermount(true) {
        return Ok(true);
    }
    Err(std::io::Error::last_os_error())
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (see [`unmount`]) and waits for the session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if unmount(&self.mountpoint)? {
            // Detached lazily: the session ends when the last user lets
            // go; don't wait for it.
            return Ok(());
        }
        session.join()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("unmount {}: {e}", self.mountpoint.display());
        }
    }
}

/// Whether `path` (canonical) is a mount point of this process's mount
/// namespace, from `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let info = std::fs::read("/proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    Ok(info
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .any(|field| unescape_mountinfo(field) == want))
}

/// A mountinfo path field: space, tab, newline and backslash appear as
/// `\ooo` (octal).
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Checks what a mount at `mountpoint` (canonical) needs, so that a
/// failure says what to do instead of an errno from deep in the mount:
/// the mount point is not already a mount point (stacking a second
/// filesystem there hides the first), `/dev/fuse` can be opened, and a
/// non-root user has `fusermount3`. [`spawn_mount`] and `spockfs-mount`
/// call it; errors carry a one-line message.
pub fn check_can_mount(mountpoint: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    if is_mount_point(mountpoint)? {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "{} is already a mount point: unmount it first, or mount on another directory",
                mountpoint.display()
            ),
        ));
    }
    let root = rustix::process::geteuid().is_root();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => {}
        Err(e)
            if e.kind() == ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO)) =>
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                "no /dev/fuse: load the fuse kernel module (modprobe fuse); \
                 in a container, pass the device (docker run --device /dev/fuse)",
            ));
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied && !root => {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata("/dev/fuse")
                .map(|m| format!("{:04o}", m.permissions().mode() & 0o7777))
                .unwrap_or_else(|_| "unknown".into());
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot open /dev/fuse: permission denied (mode {mode}); a mount by \
                     a non-root user needs /dev/fuse readable and writable by all \
                     (0666, as udev sets it on Debian: `chmod 0666 /dev/fuse` as root) \
                     and fusermount3 (Debian package fuse3), or mount as root"
                ),
            ));
        }
        Err(e) => {
            return Err(Error::new(e.kind(), format!("cannot open /dev/fuse: {e}")));
        }
    }
    if !root && !on_path("fusermount3") && !on_path("fusermount") {
        return Err(Error::new(
            ErrorKind::NotFound,
            "fusermount3 not found: a mount by a non-root user needs it \
             (Debian package fuse3), or mount as root",
        ));
    }
    Ok(())
}

/// Whether the executable `name` is in a `$PATH` directory.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .any(|d| std::fs::metadata(d.join(name)).is_ok_and(|m| m.is_file()))
    })
}

/// Mounts `client`'s filesystem at `mountpoint` and serves it from
/// background threads (`cfg.threads` event loops, each with its own
/// single-threaded runtime and connections: no tokio runtime is needed
/// around the call). Refuses what [`check_can_mount`] refuses.
pub fn spawn_mount(
    client: Client,
    mountpoint: &Path,
    cfg: MountConfig,
) -> std::io::Result<Mounted> {
    let mountpoint = mountpoint.canonicalize()?;
    check_can_mount(&mountpoint)?;
    let fs = SpockFuse::new(client, cfg);
    let config = fs.fuser_config();
    let session = fuser::Session::new(fs, &mountpoint, &config)?.spawn()?;
    raise_readahead(&mountpoint);
    Ok(Mounted {
        session: Some(session),
        mountpoint,
    })
}

/// Unmounts `mountpoint` (see [`unmount`]) when the process gets SIGINT or
/// SIGTERM; what `spockfs-mount` runs beside its session. Returns at once
/// if the signal handlers cannot be installed.
pub async fn unmount_on_signal(mountpoint: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal: unmounting {}", mountpoint.display());
    let shown = mountpoint.display().to_string();
    match tokio::task::spawn_blocking(move || unmount(&mountpoint)).await {
        Ok(Ok(false)) => {}
        Ok(Ok(true)) => eprintln!("spockfs-mount: {shown} busy: detached lazily"),
        Ok(Err(e)) => eprintln!("spockfs-mount: unmount {shown}: {e}"),
        Err(e) => eprintln!("spockfs-mount: unmount {shown}: {e}"),
    }
}
