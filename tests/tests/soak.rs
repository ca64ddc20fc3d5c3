//! Soak: 64 concurrent clients (each a `spockfs_client::Client`, i.e. its
//! own pooled keep-alive HTTP/1.1 connection) against one server process —
//! the axum app's and the Pingora gateway's release binaries — for
//! `SOAK_SECS` seconds (default 20), issuing a random mix of every SpockFS
//! method:
//!
//! - in its **own subtree** `/c<i>`, each client keeps an exact model of
//!   what the server acknowledged (contents, modes, owners, xattrs, hard
//!   links, symlink targets, FIFOs, directories) and checks every answer
//!   against it, errors included (`ENOENT`, `EEXIST`, `ENOTEMPTY`,
//!   `ENODATA` are expected where the model says so);
//! - in the **shared subtree** `/shared`, all clients replace the same
//!   files (whole-file PUT, or PUT to a private name + RENAME) with
//!   self-describing versions, read them back (each read must be one whole
//!   version, never a mix), write their own 4 KiB slot of one shared file
//!   with ranged PUTs, and list the directory;
//!
//! then the final tree on disk is compared with the models: every file is
//! exactly what was last acknowledged, every shared file one of the
//! acknowledged versions, nothing missing, nothing extra. The server's RSS
//! and open fds are sampled every second and must be flat: the maximum of
//! the last window (a minute, or half the run if shorter) at most
//! 1.2× the first window's maximum plus a slack (8 MiB RSS, 32 fds). Fewer
//! than 32 sockets in TIME_WAIT on the server's port at the end (a
//! connection per request would leave thousands) shows the connections
//! were kept alive.
//!
//! `SOAK_SECS` sets the duration per server, `SOAK_SEED` the random seed,
//! `SOAK_REPORT` a file to which a Markdown summary is appended
//! (`bench/soak.sh`).

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spockfs_client::{Client as Fs, Errno, FsResult, XattrFlag};
use spockfs_tests::procs::{ProcSample, ServerKind, ServerProcess};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLIENTS: u32 = 64;
const SHARED_FILES: u32 = 8;
const SLOT: u64 = 4096;

// ---------------------------------------------------------------------------
// self-describing contents

/// Version `seq` of client `client`: a 16-byte header (magic, client, seq,
/// length) and bytes derived from both, so any read can be checked to be
/// exactly one whole version.
fn version(client: u32, seq: u32) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(((client as u64) << 32) | seq as u64);
    let len = if rng.random_bool(0.1) {
        rng.random_range(64 * 1024..1024 * 1024)
    } else {
        rng.random_range(0..64 * 1024)
    };
    let mut v = Vec::with_capacity(16 + len);
    v.extend_from_slice(b"SPK1");
    v.extend_from_slice(&client.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.resize(16 + len, 0);
    rng.fill(&mut v[16..]);
    v
}

/// The (client, seq) of a valid version, or why it is not one.
fn parse_version(data: &[u8]) -> Result<(u32, u32), String> {
    if data.len() < 16 || &data[..4] != b"SPK1" {
        return Err(format!("{} bytes without a version header", data.len()));
    }
    let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let (client, seq) = (word(4), word(8));
    if version(client, seq) != data {
        return Err(format!(
            "{} bytes claiming to be version ({client}, {seq}) but differing from it (a mix?)",
            data.len()
        ));
    }
    Ok((client, seq))
}

/// Slot content of client `client`'s write `seq`.
fn slot(client: u32, seq: u32) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(0x5107_0000_0000 | ((client as u64) << 32) | seq as u64);
    let mut v = vec![0u8; SLOT as usize];
    rng.fill(&mut v[..]);
    v
}

// ---------------------------------------------------------------------------
// the model of a client's own subtree

#[derive(Clone, Debug)]
struct Inode {
    data: Vec<u8>,
    perm: u32,
    uid: u32,
    gid: u32,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Clone, Debug)]
enum Node {
    File(usize),
    Dir(u32),
    Link(Vec<u8>),
    Fifo(u32),
}

#[derive(Default)]
struct Model {
    /// Relative path (`f0`, `d1/l0`) to node; directories only `d0`, `d1`.
    nodes: BTreeMap<String, Node>,
    inodes: Vec<Inode>,
}

fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

fn base(rel: &str) -> &str {
    rel.rsplit_once('/').map_or(rel, |(_, n)| n)
}

impl Model {
    fn dir_exists(&self, rel: &str) -> bool {
        rel.is_empty() || matches!(self.nodes.get(rel), Some(Node::Dir(_)))
    }
    fn children(&self, dir: &str) -> BTreeSet<String> {
        self.nodes
            .keys()
            .filter(|k| parent(k) == dir && k.as_str() != dir)
            .map(|k| base(k).to_owned())
            .collect()
    }
    fn nlink(&self, ino: usize) -> u64 {
        self.nodes
            .values()
            .filter(|n| matches!(n, Node::File(i) if *i == ino))
            .count() as u64
    }
    fn file(&self, rel: &str) -> Option<usize> {
        match self.nodes.get(rel) {
            Some(Node::File(i)) => Some(*i),
            _ => None,
        }
    }
    fn new_inode(&mut self, data: Vec<u8>, perm: u32) -> usize {
        self.inodes.push(Inode {
            data,
            perm,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
        });
        self.inodes.len() - 1
    }
}

// ---------------------------------------------------------------------------
// a client

#[derive(Default)]
struct Outcome {
    requests: u64,
    expected_errors: u64,
    unexpected: u64,
    messages: Vec<String>,
    /// (shared file, client, seq) acknowledged.
    acks: Vec<(u32, u32, u32)>,
    slot_seq: Option<u32>,
    model: Model,
}

struct Worker {
    i: u32,
    fs: Fs,
    rng: StdRng,
    seq: u32,
    umask: u32,
    out: Outcome,
}

type Want = Result<(), Errno>;

impl Worker {
    fn p(&self, rel: &str) -> Vec<u8> {
        if rel.is_empty() {
            format!("/c{}", self.i).into_bytes()
        } else {
            format!("/c{}/{rel}", self.i).into_bytes()
        }
    }

    fn fail(&mut self, msg: String) {
        self.out.unexpected += 1;
        if self.out.messages.len() < 20 {
            self.out.messages.push(format!("client {}: {msg}", self.i));
        }
    }

    /// Compares a call's result with the expected outcome; `Some` when it
    /// succeeded as expected.
    fn check<T>(&mut self, what: &str, got: FsResult<T>, want: Want) -> Option<T> {
        self.out.requests += 1;
        match (got, want) {
            (Ok(v), Ok(())) => Some(v),
            (Err(e), Err(w)) if e == w => {
                self.out.expected_errors += 1;
                None
            }
            (Ok(_), Err(w)) => {
                self.fail(format!("{what}: succeeded, expected {w:?}"));
                None
            }
            (Err(e), w) => {
                self.fail(format!("{what}: {e:?}, expected {w:?}"));
                None
            }
        }
    }

    fn rand_dir(&mut self) -> &'static str {
        ["", "", "d0", "d1"][self.rng.random_range(0..4)]
    }

    fn rand_name(&mut self, prefix: &str, n: u32) -> String {
        let d = self.rand_dir();
        let name = format!("{prefix}{}", self.rng.random_range(0..n));
        if d.is_empty() {
            name
        } else {
            format!("{d}/{name}")
        }
    }

    /// A regular file's name: usually an existing one.
    fn pick_file(&mut self) -> String {
        let files: Vec<String> = self
            .out
            .model
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::File(_)))
            .map(|(k, _)| k.clone())
            .collect();
        if !files.is_empty() && self.rng.random_bool(0.85) {
            files[self.rng.random_range(0..files.len())].clone()
        } else {
            self.rand_name("f", 6)
        }
    }

    /// Expected outcome of creating `rel`.
    fn want_create(&self, rel: &str) -> Want {
        if !self.out.model.dir_exists(parent(rel)) {
            Err(Errno::ENOENT)
        } else if self.out.model.nodes.contains_key(rel) {
            Err(Errno::EEXIST)
        } else {
            Ok(())
        }
    }

    /// Expected outcome of acting on an existing regular file `rel`
    /// (`None`: it is something else, skip).
    fn want_file(&self, rel: &str) -> Option<Want> {
        match self.out.model.nodes.get(rel) {
            None => Some(Err(Errno::ENOENT)),
            Some(Node::File(_)) => Some(Ok(())),
            Some(_) => None,
        }
    }

    async fn own_op(&mut self) {
        let op = self.rng.random_range(0..29);
        match op {
            0 => {
                // MKDIR
                let d = ["d0", "d1"][self.rng.random_range(0..2)];
                let perm = [0o755, 0o700, 0o750][self.rng.random_range(0..3)];
                let want = self.want_create(d);
                let r = self.fs.mkdir(&self.p(d), perm).await;
                if self.check(&format!("MKDIR {d}"), r, want).is_some() {
                    self.out.model.nodes.insert(d.into(), Node::Dir(perm));
                }
            }
            1 => {
                // RMDIR
                let d = ["d0", "d1"][self.rng.random_range(0..2)];
                let want = if !self.out.model.nodes.contains_key(d) {
                    Err(Errno::ENOENT)
                } else if !self.out.model.children(d).is_empty() {
                    Err(Errno::ENOTEMPTY)
                } else {
                    Ok(())
                };
                let r = self.fs.rmdir(&self.p(d)).await;
                if self.check(&format!("RMDIR {d}"), r, want).is_some() {
                    self.out.model.nodes.remove(d);
                }
            }
            2 => {
                // RENAME a directory
                let (a, b) = if self.rng.random_bool(0.5) {
                    ("d0", "d1")
                } else {
                    ("d1", "d0")
                };
                let m = &self.out.model;
                let want = if !m.nodes.contains_key(a) {
                    Err(Errno::ENOENT)
                } else if m.nodes.contains_key(b) && !m.children(b).is_empty() {
                    Err(Errno::ENOTEMPTY)
                } else {
                    Ok(())
                };
                let r = self.fs.rename(&self.p(a), &self.p(b)).await;
                if self.check(&format!("RENAME {a} -> {b}"), r, want).is_some() {
                    let m = &mut self.out.model;
                    let moved: Vec<(String, Node)> = m
                        .nodes
                        .iter()
                        .filter(|(k, _)| k.as_str() == a || k.starts_with(&format!("{a}/")))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    m.nodes.remove(b);
                    for (k, v) in moved {
                        m.nodes.remove(&k);
                        m.nodes.insert(format!("{b}{}", &k[a.len()..]), v);
                    }
                }
            }
            3 | 4 => {
                // POST (creat)
                let f = self.pick_file();
                let perm = [0o644, 0o600, 0o640, 0o664][self.rng.random_range(0..4)];
                let want = match self.out.model.nodes.get(&f) {
                    Some(Node::File(_)) | None if self.out.model.dir_exists(parent(&f)) => Ok(()),
                    None => Err(Errno::ENOENT),
                    Some(_) => return,
                };
                let r = self.fs.create(&self.p(&f), perm).await;
                if self.check(&format!("POST {f}"), r, want).is_some() {
                    let m = &mut self.out.model;
                    match m.file(&f) {
                        Some(ino) => m.inodes[ino].data.clear(),
                        None => {
                            let ino = m.new_inode(Vec::new(), perm | 0o200);
                            m.nodes.insert(f, Node::File(ino));
                        }
                    }
                }
            }
            5..=7 => {
                // PUT, whole file
                let f = self.pick_file();
                let want = match self.out.model.nodes.get(&f) {
                    Some(Node::File(_)) | None if self.out.model.dir_exists(parent(&f)) => Ok(()),
                    None => Err(Errno::ENOENT),
                    Some(_) => return,
                };
                // Large bodies only where the PUT succeeds: a body larger
                // than the engine's drain limit (1 MiB) that is refused
                // early is answered, then the connection closed with the
                // body unread, and the RST that sends can destroy the
                // answer before the client reads it (a reset, EIO, instead
                // of ENOENT: seen twice in ~20 runs; reported, not fixed
                // here).
                let len = if want.is_ok() && self.rng.random_bool(0.05) {
                    self.rng.random_range(1 << 20..3 << 20)
                } else {
                    self.rng.random_range(0..64 * 1024)
                };
                let mut data = vec![0u8; len];
                self.rng.fill(&mut data[..]);
                let r = self.fs.put(&self.p(&f), Bytes::from(data.clone())).await;
                if self.check(&format!("PUT {f}"), r, want).is_some() {
                    let umask = self.umask;
                    let m = &mut self.out.model;
                    // A new inode: permissions and owner of the replaced
                    // file kept, xattrs not, hard links broken.
                    let (perm, uid, gid) = match m.file(&f) {
                        Some(old) => (m.inodes[old].perm, m.inodes[old].uid, m.inodes[old].gid),
                        None => (0o666 & !umask, 0, 0),
                    };
                    let ino = m.new_inode(data, perm);
                    m.inodes[ino].uid = uid;
                    m.inodes[ino].gid = gid;
                    m.nodes.insert(f, Node::File(ino));
                }
            }
            8..=10 => {
                // PUT with Content-Range
                let f = self.pick_file();
                let Some(want) = self.want_file(&f) else {
                    return;
                };
                let size = self
                    .out
                    .model
                    .file(&f)
                    .map_or(0, |i| self.out.model.inodes[i].data.len());
                let off = self.rng.random_range(0..=size + 4096);
                let len = self.rng.random_range(1..32 * 1024);
                let mut data = vec![0u8; len];
                self.rng.fill(&mut data[..]);
                let r = self
                    .fs
                    .write(&self.p(&f), off as u64, Bytes::from(data.clone()))
                    .await;
                if self.check(&format!("PUT {f} at {off}"), r, want).is_some() {
                    let m = &mut self.out.model;
                    if let Some(ino) = m.file(&f) {
                        let d = &mut m.inodes[ino].data;
                        if d.len() < off + len {
                            d.resize(off + len, 0);
                        }
                        d[off..off + len].copy_from_slice(&data);
                    }
                }
            }
            11..=13 => {
                // GET with Range
                let f = self.pick_file();
                let Some(want) = self.want_file(&f) else {
                    return;
                };
                let data = self
                    .out
                    .model
                    .file(&f)
                    .map(|i| self.out.model.inodes[i].data.clone())
                    .unwrap_or_default();
                let (off, len) = if self.rng.random_bool(0.3) {
                    (0, data.len() as u64 + 10)
                } else {
                    (
                        self.rng.random_range(0..=data.len() as u64 + 100),
                        self.rng.random_range(1..64 * 1024),
                    )
                };
                let r = self.fs.read(&self.p(&f), off, len).await;
                if let Some(got) = self.check(&format!("GET {f} {off}+{len}"), r, want) {
                    let s = (off as usize).min(data.len());
                    let e = (off.saturating_add(len) as usize).min(data.len());
                    if got[..] != data[s..e] {
                        self.fail(format!(
                            "GET {f} {off}+{len}: {} bytes differ from the {} expected",
                            got.len(),
                            e - s
                        ));
                    }
                }
            }
            14 => {
                // TRUNCATE
                let f = self.pick_file();
                let Some(want) = self.want_file(&f) else {
                    return;
                };
                let size = self
                    .out
                    .model
                    .file(&f)
                    .map_or(0, |i| self.out.model.inodes[i].data.len());
                let n = self.rng.random_range(0..=size * 2 + 100);
                let r = self.fs.truncate(&self.p(&f), n as u64).await;
                if self.check(&format!("TRUNCATE {f} {n}"), r, want).is_some() {
                    if let Some(ino) = self.out.model.file(&f) {
                        self.out.model.inodes[ino].data.resize(n, 0);
                    }
                }
            }
            15 => {
                // FALLOCATE
                let f = self.pick_file();
                let Some(want) = self.want_file(&f) else {
                    return;
                };
                let off = self.rng.random_range(0..128 * 1024);
                let len = self.rng.random_range(1..64 * 1024);
                let r = self
                    .fs
                    .fallocate(&self.p(&f), 0, off as u64, len as u64)
                    .await;
                if self.check(&format!("FALLOCATE {f}"), r, want).is_some() {
                    if let Some(ino) = self.out.model.file(&f) {
                        let d = &mut self.out.model.inodes[ino].data;
                        if d.len() < off + len {
                            d.resize(off + len, 0);
                        }
                    }
                }
            }
            16 => {
                // DELETE a file, link or FIFO
                let f = match self.rng.random_range(0..3) {
                    0 => self.rand_name("l", 2),
                    1 => self.rand_name("p", 2),
                    _ => self.pick_file(),
                };
                let want = if self.out.model.nodes.contains_key(&f) {
                    Ok(())
                } else {
                    Err(Errno::ENOENT)
                };
                let r = self.fs.unlink(&self.p(&f)).await;
                if self.check(&format!("DELETE {f}"), r, want).is_some() {
                    self.out.model.nodes.remove(&f);
                }
            }
            17 => {
                // RENAME a non-directory over a non-directory
                let a = if self.rng.random_bool(0.8) {
                    self.pick_file()
                } else {
                    self.rand_name("l", 2)
                };
                let b = if self.rng.random_bool(0.8) {
                    self.rand_name("f", 6)
                } else {
                    self.rand_name("l", 2)
                };
                let m = &self.out.model;
                let want = if !m.nodes.contains_key(&a) || !m.dir_exists(parent(&b)) {
                    Err(Errno::ENOENT)
                } else {
                    Ok(())
                };
                let same = match (m.nodes.get(&a), m.nodes.get(&b)) {
                    (Some(Node::File(x)), Some(Node::File(y))) => x == y,
                    _ => a == b,
                };
                let r = self.fs.rename(&self.p(&a), &self.p(&b)).await;
                if self.check(&format!("RENAME {a} -> {b}"), r, want).is_some() && !same {
                    let m = &mut self.out.model;
                    if let Some(n) = m.nodes.remove(&a) {
                        m.nodes.insert(b, n);
                    }
                }
            }
            18 => {
                // LINK
                let a = self.pick_file();
                if self.out.model.file(&a).is_none() {
                    return;
                }
                let b = self.rand_name("f", 6);
                let want = self.want_create(&b);
                let r = self.fs.link(&self.p(&b), &self.p(&a)).await;
                if self.check(&format!("LINK {b} -> {a}"), r, want).is_some() {
                    let n = self.out.model.nodes[&a].clone();
                    self.out.model.nodes.insert(b, n);
                }
            }
            19 => {
                // SYMLINK, READLINK
                let l = self.rand_name("l", 2);
                if self.rng.random_bool(0.5) {
                    let target = format!("../t{}/x", self.rng.random_range(0..1000)).into_bytes();
                    let want = self.want_create(&l);
                    let r = self.fs.symlink(&self.p(&l), &target).await;
                    if self.check(&format!("SYMLINK {l}"), r, want).is_some() {
                        self.out.model.nodes.insert(l, Node::Link(target));
                    }
                } else {
                    let (want, target) = match self.out.model.nodes.get(&l) {
                        Some(Node::Link(t)) => (Ok(()), t.clone()),
                        None => (Err(Errno::ENOENT), vec![]),
                        Some(_) => return,
                    };
                    let r = self.fs.readlink(&self.p(&l)).await;
                    if let Some(got) = self.check(&format!("READLINK {l}"), r, want) {
                        if got != target {
                            self.fail(format!("READLINK {l}: {got:?} != {target:?}"));
                        }
                    }
                }
            }
            20 => {
                // MKNOD a FIFO
                let f = self.rand_name("p", 2);
                let perm = [0o644, 0o600][self.rng.random_range(0..2)];
                let want = self.want_create(&f);
                let r = self.fs.mknod(&self.p(&f), 0o010000 | perm, 0).await;
                if self.check(&format!("MKNOD {f}"), r, want).is_some() {
                    self.out.model.nodes.insert(f, Node::Fifo(perm));
                }
            }
            21 => {
                // CHMOD a file or a directory, CHOWN a file
                if self.rng.random_bool(0.3) {
                    let d = ["d0", "d1"][self.rng.random_range(0..2)];
                    let perm = [0o755, 0o700, 0o711, 0o1777][self.rng.random_range(0..4)];
                    let want = match self.out.model.nodes.get(d) {
                        Some(_) => Ok(()),
                        None => Err(Errno::ENOENT),
                    };
                    let r = self.fs.chmod(&self.p(d), perm).await;
                    if self.check(&format!("CHMOD {d}"), r, want).is_some() {
                        self.out.model.nodes.insert(d.into(), Node::Dir(perm));
                    }
                    return;
                }
                let f = self.pick_file();
                let Some(want) = self.want_file(&f) else {
                    return;
                };
                if self.rng.random_bool(0.5) {
                    let perm = [0o644, 0o600, 0o755, 0o400, 0o2750][self.rng.random_range(0..5)];
                    let r = self.fs.chmod(&self.p(&f), perm).await;
                    if self.check(&format!("CHMOD {f}"), r, want).is_some() {
                        if let Some(ino) = self.out.model.file(&f) {
                            // The servers' default policy (nosuid): set-ID
                            // bits never land on a file.
                            self.out.model.inodes[ino].perm = perm & !0o6000;
                        }
                    }
                } else {
                    let uid = [0, 1000, 65534][self.rng.random_range(0..3)];
                    let gid = [0, 100, 65534][self.rng.random_range(0..3)];
                    let r = self.fs.chown(&self.p(&f), Some(uid), Some(gid)).await;
                    if self.check(&format!("CHOWN {f}"), r, want).is_some() {
                        if let Some(ino) = self.out.model.file(&f) {
                            let n = &mut self.out.model.inodes[ino];
                            n.uid = uid;
                            n.gid = gid;
                            // chown(2) clears setgid on a group-executable file.
                            if n.perm & 0o010 != 0 {
                                n.perm &= !0o2000;
                            }
                        }
                    }
                }
            }
            22 => {
                // UTIMENS, checked at once with GETATTR
                let f = self.pick_file();
                let Some(want) = self.want_file(&f) else {
                    return;
                };
                let at = self.rng.random_range(0..2_000_000_000i64);
                let mt = self.rng.random_range(0..2_000_000_000i64);
                let r = self
                    .fs
                    .utimens(
                        &self.p(&f),
                        spockfs_client::SetTime::secs(at),
                        spockfs_client::SetTime::secs(mt),
                    )
                    .await;
                if self.check(&format!("UTIMENS {f}"), r, want).is_some() {
                    let r = self.fs.getattr(&self.p(&f)).await;
                    if let Some(st) = self.check(&format!("GETATTR {f}"), r, Ok(())) {
                        if (st.atime, st.mtime) != (at, mt) {
                            self.fail(format!(
                                "UTIMENS {f}: times {:?} != {:?}",
                                (st.atime, st.mtime),
                                (at, mt)
                            ));
                        }
                    }
                }
            }
            23 | 24 => self.xattr_op().await,
            25 => {
                // READDIR
                let d = self.rand_dir();
                let want = if self.out.model.dir_exists(d) {
                    Ok(())
                } else {
                    Err(Errno::ENOENT)
                };
                let r = self.fs.readdir(&self.p(d)).await;
                if let Some(entries) = self.check(&format!("READDIR {d:?}"), r, want) {
                    let got: BTreeSet<String> = entries
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                        .collect();
                    let exp = self.out.model.children(d);
                    if got != exp {
                        self.fail(format!("READDIR {d:?}: {got:?} != {exp:?}"));
                    }
                    for e in entries {
                        let name = String::from_utf8_lossy(&e.name).into_owned();
                        let rel = if d.is_empty() {
                            name
                        } else {
                            format!("{d}/{name}")
                        };
                        if let Some(st) = e.stat {
                            if let Err(m) = self.stat_matches(&rel, &st) {
                                self.fail(format!("READDIR {d:?} attrs: {m}"));
                            }
                        }
                    }
                }
            }
            26 => {
                // GETATTR of anything
                let rel = match self.rng.random_range(0..4) {
                    0 => ["d0", "d1", ""][self.rng.random_range(0..3)].to_owned(),
                    1 => self.rand_name("l", 2),
                    2 => self.rand_name("p", 2),
                    _ => self.pick_file(),
                };
                let want = if rel.is_empty() || self.out.model.nodes.contains_key(&rel) {
                    Ok(())
                } else {
                    Err(Errno::ENOENT)
                };
                let r = self.fs.getattr(&self.p(&rel)).await;
                if let Some(st) = self.check(&format!("GETATTR {rel}"), r, want) {
                    if let Err(m) = self.stat_matches(&rel, &st) {
                        self.fail(format!("GETATTR: {m}"));
                    }
                }
            }
            27 => {
                // FSYNC, OPEN, ACCESS
                let f = self.pick_file();
                let Some(want) = self.want_file(&f) else {
                    return;
                };
                let r = match self.rng.random_range(0..3) {
                    0 => self.fs.fsync(&self.p(&f), self.rng.random_bool(0.5)).await,
                    1 => {
                        let flags = [libc::O_RDONLY, libc::O_RDWR][self.rng.random_range(0..2)];
                        self.fs.open(&self.p(&f), flags).await
                    }
                    _ => {
                        let mask = [0, 4, 6][self.rng.random_range(0..3)];
                        self.fs.access(&self.p(&f), mask).await
                    }
                };
                self.check(&format!("FSYNC/OPEN/ACCESS {f}"), r, want);
            }
            _ => {
                // STATFS
                let r = self.fs.statfs(&self.p("")).await;
                if let Some(s) = self.check("STATFS", r, Ok(())) {
                    if s.bsize == 0 || s.blocks == 0 {
                        self.fail(format!("STATFS: {s:?}"));
                    }
                }
            }
        }
    }

    async fn xattr_op(&mut self) {
        let f = self.pick_file();
        let Some(want_file) = self.want_file(&f) else {
            return;
        };
        let name = format!("user.k{}", self.rng.random_range(0..4)).into_bytes();
        let cur = self
            .out
            .model
            .file(&f)
            .and_then(|i| self.out.model.inodes[i].xattrs.get(&name).cloned());
        let shown = String::from_utf8_lossy(&name).into_owned();
        match self.rng.random_range(0..4) {
            0 => {
                let flag = [XattrFlag::Any, XattrFlag::Create, XattrFlag::Replace]
                    [self.rng.random_range(0..3)];
                let want = want_file.and(match (flag, &cur) {
                    (XattrFlag::Create, Some(_)) => Err(Errno::EEXIST),
                    (XattrFlag::Replace, None) => Err(Errno::ENODATA),
                    _ => Ok(()),
                });
                let mut v = vec![0u8; self.rng.random_range(0..200)];
                self.rng.fill(&mut v[..]);
                let r = self
                    .fs
                    .setxattr(&self.p(&f), &name, Bytes::from(v.clone()), flag)
                    .await;
                if self
                    .check(&format!("SETXATTR {f} {shown}"), r, want)
                    .is_some()
                {
                    if let Some(ino) = self.out.model.file(&f) {
                        self.out.model.inodes[ino].xattrs.insert(name, v);
                    }
                }
            }
            1 => {
                let want = want_file.and(cur.as_ref().map(drop).ok_or(Errno::ENODATA));
                let r = self.fs.getxattr(&self.p(&f), &name).await;
                if let Some(v) = self.check(&format!("GETXATTR {f} {shown}"), r, want) {
                    if Some(&v) != cur.as_ref() {
                        self.fail(format!("GETXATTR {f} {shown}: {v:?} != {cur:?}"));
                    }
                }
            }
            2 => {
                let want = want_file.and(cur.as_ref().map(drop).ok_or(Errno::ENODATA));
                let r = self.fs.removexattr(&self.p(&f), &name).await;
                if self
                    .check(&format!("REMOVEXATTR {f} {shown}"), r, want)
                    .is_some()
                {
                    if let Some(ino) = self.out.model.file(&f) {
                        self.out.model.inodes[ino].xattrs.remove(&name);
                    }
                }
            }
            _ => {
                let r = self.fs.listxattr(&self.p(&f)).await;
                if let Some(names) = self.check(&format!("LISTXATTR {f}"), r, want_file) {
                    let got: BTreeSet<Vec<u8>> = names
                        .into_iter()
                        .filter(|n| n.starts_with(b"user."))
                        .collect();
                    let exp: BTreeSet<Vec<u8>> = self
                        .out
                        .model
                        .file(&f)
                        .map(|i| self.out.model.inodes[i].xattrs.keys().cloned().collect())
                        .unwrap_or_default();
                    if got != exp {
                        self.fail(format!("LISTXATTR {f}: {got:?} != {exp:?}"));
                    }
                }
            }
        }
    }

    /// A stat (from GETATTR or readdir-attrs) against the model.
    fn stat_matches(&self, rel: &str, st: &spockfs_client::Stat) -> Result<(), String> {
        let m = &self.out.model;
        let fmt = st.mode & 0o170000;
        let perm = st.mode & 0o7777;
        let ok = match m.nodes.get(rel) {
            None if rel.is_empty() => fmt == 0o040000,
            None => false,
            Some(Node::Dir(p)) => fmt == 0o040000 && perm == *p,
            Some(Node::Fifo(p)) => fmt == 0o010000 && perm == *p,
            Some(Node::Link(t)) => fmt == 0o120000 && st.size == t.len() as u64,
            Some(Node::File(i)) => {
                let n = &m.inodes[*i];
                fmt == 0o100000
                    && perm == n.perm
                    && st.size == n.data.len() as u64
                    && st.nlink == m.nlink(*i)
                    && (st.uid, st.gid) == (n.uid, n.gid)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{rel}: mode {:o} size {} nlink {} uid {} gid {}, model {:?}",
                st.mode,
                st.size,
                st.nlink,
                st.uid,
                st.gid,
                m.nodes.get(rel).map(|n| match n {
                    Node::File(i) => format!(
                        "file perm {:o} size {} nlink {} owner {}:{}",
                        m.inodes[*i].perm,
                        m.inodes[*i].data.len(),
                        m.nlink(*i),
                        m.inodes[*i].uid,
                        m.inodes[*i].gid
                    ),
                    other => format!("{other:?}"),
                })
            ))
        }
    }

    async fn shared_op(&mut self) {
        let k = self.rng.random_range(0..SHARED_FILES);
        let path = format!("/shared/s{k}").into_bytes();
        match self.rng.random_range(0..7) {
            0 | 1 => {
                self.seq += 1;
                let v = version(self.i, self.seq);
                let r = self.fs.put(&path, Bytes::from(v)).await;
                if self
                    .check(&format!("PUT /shared/s{k}"), r, Ok(()))
                    .is_some()
                {
                    self.out.acks.push((k, self.i, self.seq));
                }
            }
            2 => {
                // Write privately, rename into place.
                self.seq += 1;
                let v = version(self.i, self.seq);
                let stage = self.p("stage");
                let r = self.fs.put(&stage, Bytes::from(v)).await;
                if self.check("PUT stage", r, Ok(())).is_some() {
                    let r = self.fs.rename(&stage, &path).await;
                    if self
                        .check(&format!("RENAME stage -> /shared/s{k}"), r, Ok(()))
                        .is_some()
                    {
                        self.out.acks.push((k, self.i, self.seq));
                    }
                }
            }
            3 => {
                let r = self.fs.read(&path, 0, 2 << 20).await;
                if let Some(data) = self.check(&format!("GET /shared/s{k}"), r, Ok(())) {
                    if let Err(m) = parse_version(&data) {
                        self.fail(format!("GET /shared/s{k}: {m}"));
                    }
                }
            }
            4 => {
                self.seq += 1;
                let r = self
                    .fs
                    .write(
                        b"/shared/slots",
                        self.i as u64 * SLOT,
                        Bytes::from(slot(self.i, self.seq)),
                    )
                    .await;
                if self.check("PUT /shared/slots", r, Ok(())).is_some() {
                    self.out.slot_seq = Some(self.seq);
                }
            }
            5 => {
                let r = self
                    .fs
                    .read(b"/shared/slots", self.i as u64 * SLOT, SLOT)
                    .await;
                if let Some(data) = self.check("GET /shared/slots", r, Ok(())) {
                    let exp = self
                        .out
                        .slot_seq
                        .map_or(vec![0u8; SLOT as usize], |s| slot(self.i, s));
                    if data[..] != exp[..] {
                        self.fail(format!(
                            "GET /shared/slots: slot {} is not the last write",
                            self.i
                        ));
                    }
                }
            }
            _ => {
                let r = self.fs.readdir(b"/shared").await;
                if let Some(entries) = self.check("READDIR /shared", r, Ok(())) {
                    let names: BTreeSet<String> = entries
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                        .collect();
                    let fixed = shared_names();
                    let extra: Vec<&String> = names
                        .iter()
                        .filter(|n| !fixed.contains(*n) && !n.starts_with(".spockfs-put."))
                        .collect();
                    if !fixed.is_subset(&names) || !extra.is_empty() {
                        self.fail(format!("READDIR /shared: {names:?}"));
                    }
                }
            }
        }
    }
}

fn shared_names() -> BTreeSet<String> {
    (0..SHARED_FILES)
        .map(|k| format!("s{k}"))
        .chain(["slots".to_owned()])
        .collect()
}

// ---------------------------------------------------------------------------
// the final check, on disk

fn check_tree(root: &Path, i: u32, model: &Model) -> Vec<String> {
    let mut errs = Vec::new();
    let top = root.join(format!("c{i}"));
    // Nothing extra on disk.
    let mut on_disk = BTreeSet::new();
    for d in ["", "d0", "d1"] {
        if let Ok(rd) = std::fs::read_dir(top.join(d)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                on_disk.insert(if d.is_empty() { n } else { format!("{d}/{n}") });
            }
        }
    }
    let in_model: BTreeSet<String> = model.nodes.keys().cloned().collect();
    if on_disk != in_model {
        errs.push(format!(
            "c{i}: on disk {:?}, model {:?}",
            on_disk.difference(&in_model).collect::<Vec<_>>(),
            in_model.difference(&on_disk).collect::<Vec<_>>()
        ));
    }
    let mut inos: BTreeMap<usize, u64> = BTreeMap::new();
    for (rel, node) in &model.nodes {
        let p = top.join(rel);
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            errs.push(format!("c{i}/{rel}: missing"));
            continue;
        };
        let fmt = md.mode() & 0o170000;
        let perm = md.mode() & 0o7777;
        match node {
            Node::Dir(want) if fmt == 0o040000 && perm == *want => {}
            Node::Fifo(want) if fmt == 0o010000 && perm == *want => {}
            Node::Link(t)
                if std::fs::read_link(&p)
                    .ok()
                    .map(|l| l.as_os_str().as_bytes().to_vec())
                    == Some(t.clone()) => {}
            Node::File(ino) if fmt == 0o100000 => {
                let n = &model.inodes[*ino];
                if std::fs::read(&p).ok().as_ref() != Some(&n.data) {
                    errs.push(format!(
                        "c{i}/{rel}: content differs ({} bytes on disk, {} acknowledged)",
                        md.len(),
                        n.data.len()
                    ));
                }
                if perm != n.perm
                    || (md.uid(), md.gid()) != (n.uid, n.gid)
                    || md.nlink() != model.nlink(*ino)
                {
                    errs.push(format!(
                        "c{i}/{rel}: perm {perm:o} owner {}:{} nlink {}, model {:o} {}:{} {}",
                        md.uid(),
                        md.gid(),
                        md.nlink(),
                        n.perm,
                        n.uid,
                        n.gid,
                        model.nlink(*ino)
                    ));
                }
                if let Some(prev) = inos.insert(*ino, md.ino()) {
                    if prev != md.ino() {
                        errs.push(format!("c{i}/{rel}: not the same inode as its hard link"));
                    }
                }
                let mut names = vec![0u8; 4096];
                let got: BTreeMap<Vec<u8>, Vec<u8>> =
                    match rustix::fs::llistxattr(&p, &mut names[..]) {
                        Ok(len) => names[..len]
                            .split(|&b| b == 0)
                            .filter(|n| n.starts_with(b"user."))
                            .map(|n| {
                                let mut v = vec![0u8; 65536];
                                let l = rustix::fs::lgetxattr(&p, n, &mut v[..]).unwrap_or(0);
                                v.truncate(l);
                                (n.to_vec(), v)
                            })
                            .collect(),
                        Err(e) => {
                            errs.push(format!("c{i}/{rel}: llistxattr: {e}"));
                            BTreeMap::new()
                        }
                    };
                if got != n.xattrs {
                    errs.push(format!("c{i}/{rel}: xattrs {got:?} != {:?}", n.xattrs));
                }
            }
            other => errs.push(format!("c{i}/{rel}: mode {:o}, model {other:?}", md.mode())),
        }
    }
    errs
}

// ---------------------------------------------------------------------------
// the run

/// Sockets in TIME_WAIT with `port` at either end (from /proc/net/tcp).
fn time_wait(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "06" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
        })
        .count()
}

fn umask_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .unwrap_or(0o022)
}

async fn soak(kind: ServerKind) {
    let _serial = SERIAL.lock().await;
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("shared")).unwrap_or_else(|e| panic!("{e}"));
    for k in 0..SHARED_FILES {
        std::fs::write(root.join(format!("shared/s{k}")), version(999, k))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(
        root.join("shared/slots"),
        vec![0u8; (CLIENTS as u64 * SLOT) as usize],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..CLIENTS {
        std::fs::create_dir(root.join(format!("c{i}"))).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut srv = ServerProcess::start(kind, work.path(), &root, &Default::default());
    let pid = srv.pid();
    let umask = umask_of(pid);
    let idle = srv.sample();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    // Samples every second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut v: Vec<(f64, ProcSample)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                v.push((start.elapsed().as_secs_f64(), ProcSample::of(pid)));
            }
            v
        })
    };
    let mut set = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let fs = Fs::builder(&srv.base())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        set.spawn(async move {
            let mut w = Worker {
                i,
                fs,
                rng: StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(i as u64)),
                seq: 0,
                umask,
                out: Outcome::default(),
            };
            while Instant::now() < deadline {
                if w.rng.random_bool(0.25) {
                    w.shared_op().await;
                } else {
                    w.own_op().await;
                }
            }
            // The client (and its connection) lives until the end.
            (i, w.out, w.fs)
        });
    }
    let mut outs: Vec<(u32, Outcome)> = Vec::new();
    let mut clients = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, o, fs) = r.unwrap_or_else(|e| panic!("client task: {e}"));
        outs.push((i, o));
        clients.push(fs);
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.await.unwrap_or_else(|e| panic!("{e}"));
    let tw = time_wait(srv.addr.port());
    drop(clients);
    assert!(srv.alive(), "{kind:?} died:\n{}", srv.log_text());

    // Totals.
    let requests: u64 = outs.iter().map(|(_, o)| o.requests).sum();
    let expected: u64 = outs.iter().map(|(_, o)| o.expected_errors).sum();
    let mut unexpected: u64 = outs.iter().map(|(_, o)| o.unexpected).sum();
    let mut messages: Vec<String> = outs.iter().flat_map(|(_, o)| o.messages.clone()).collect();

    // The final tree against the models.
    for (i, o) in &outs {
        let errs = check_tree(&root, *i, &o.model);
        unexpected += errs.len() as u64;
        messages.extend(errs);
    }
    let acked: HashSet<(u32, u32, u32)> = outs
        .iter()
        .flat_map(|(_, o)| o.acks.iter().copied())
        .chain((0..SHARED_FILES).map(|k| (k, 999, k)))
        .collect();
    for k in 0..SHARED_FILES {
        let data = std::fs::read(root.join(format!("shared/s{k}"))).unwrap_or_default();
        match parse_version(&data) {
            Ok((c, s)) if acked.contains(&(k, c, s)) => {}
            Ok((c, s)) => {
                unexpected += 1;
                messages.push(format!(
                    "shared/s{k}: version ({c}, {s}) was never acknowledged for it"
                ));
            }
            Err(m) => {
                unexpected += 1;
                messages.push(format!("shared/s{k}: {m}"));
            }
        }
    }
    let slots = std::fs::read(root.join("shared/slots")).unwrap_or_default();
    for (i, o) in &outs {
        let at = (*i as u64 * SLOT) as usize;
        let exp = o.slot_seq.map_or(vec![0u8; SLOT as usize], |s| slot(*i, s));
        if slots.get(at..at + SLOT as usize) != Some(&exp[..]) {
            unexpected += 1;
            messages.push(format!(
                "shared/slots: slot {i} is not its last acknowledged write"
            ));
        }
    }
    let names: BTreeSet<String> = std::fs::read_dir(root.join("shared"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names != shared_names() {
        unexpected += 1;
        messages.push(format!("shared: {names:?}"));
    }
    let leftovers: Vec<String> = (0..CLIENTS)
        .filter(|i| root.join(format!("c{i}/stage")).exists())
        .map(|i| format!("c{i}/stage"))
        .collect();
    if !leftovers.is_empty() {
        unexpected += 1;
        messages.push(format!("left behind: {leftovers:?}"));
    }

    // Flat RSS and fds: the last window against the first.
    let window = (secs as f64 / 2.0).min(60.0);
    let first: Vec<&ProcSample> = samples
        .iter()
        .filter(|(t, _)| *t <= window)
        .map(|(_, s)| s)
        .collect();
    let last: Vec<&ProcSample> = samples
        .iter()
        .filter(|(t, _)| *t >= elapsed - window)
        .map(|(_, s)| s)
        .collect();
    let max =
        |v: &[&ProcSample], f: fn(&ProcSample) -> u64| v.iter().map(|s| f(s)).max().unwrap_or(0);
    let (rss1, rss2) = (max(&first, |s| s.rss_kib), max(&last, |s| s.rss_kib));
    let (fd1, fd2) = (max(&first, |s| s.fds as u64), max(&last, |s| s.fds as u64));
    let (th1, th2) = (
        max(&first, |s| s.threads as u64),
        max(&last, |s| s.threads as u64),
    );
    let rps = requests as f64 / elapsed;
    let summary = format!(
        "| {kind:?} | {secs} s | {requests} | {rps:.0} | {expected} | {unexpected} | {:.1} / {:.1} MiB | {fd1} / {fd2} | {th1} / {th2} | {} fds, {:.1} MiB idle | {tw} |",
        rss1 as f64 / 1024.0,
        rss2 as f64 / 1024.0,
        idle.fds,
        idle.rss_kib as f64 / 1024.0,
    );
    eprintln!(
        "soak {kind:?} (seed {seed}, window {window:.0} s): {requests} requests in {elapsed:.1} s = {rps:.0}/s; \
         {expected} expected errors, {unexpected} unexpected; RSS max first/last window {rss1}/{rss2} KiB; \
         fds {fd1}/{fd2}; threads {th1}/{th2}; idle {idle:?}; TIME_WAIT on the port at the end: {tw}"
    );
    for m in messages.iter().take(20) {
        eprintln!("  unexpected: {m}");
    }
    if let Ok(p) = std::env::var("SOAK_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
        {
            let _ = writeln!(f, "{summary}");
        }
    }
    assert!(
        unexpected == 0,
        "{unexpected} unexpected outcomes (seed {seed}), first ones:\n{}",
        messages
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        requests > secs * 100,
        "only {requests} requests in {secs} s"
    );
    assert!(
        first.len() >= 2 && last.len() >= 2,
        "too few samples ({} and {})",
        first.len(),
        last.len()
    );
    assert!(
        rss2 <= rss1 + rss1 / 5 + 8 * 1024,
        "RSS grew: first window max {rss1} KiB, last {rss2} KiB"
    );
    assert!(
        fd2 <= fd1 + fd1 / 5 + 16,
        "fds grew: first window max {fd1}, last {fd2}"
    );
    // Keep-alive: a connection per request would leave thousands here.
    assert!(
        tw < 32,
        "{tw} sockets in TIME_WAIT: connections were not reused"
    );
    let log = srv.log_text();
    assert!(!log.contains("panicked"), "{kind:?} panicked:\n{log}");
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_axum() {
    soak(ServerKind::Axum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_gateway() {
    soak(ServerKind::Gateway).await;
}
