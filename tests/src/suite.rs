//! The conformance suite: every SpockFS method's success and error paths,
//! checked over real HTTP and against the backing store. Generic over the
//! way of serving ([`Target`]); each check works in its own directory.

use crate::{ensure, ensure_eq, CheckResult, Kind, Resp, Target};
use std::future::Future;
use std::pin::Pin;
use tokio::io::AsyncWriteExt;

type CheckFn =
    for<'a> fn(&'a Target, &'a str) -> Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>>;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check, by name.
        pub fn all() -> Vec<(&'static str, CheckFn)> {
            vec![$((stringify!($name), (|t, d| Box::pin($name(t, d))) as CheckFn)),*]
        }
    };
}

checks!(
    options,
    unknown_method,
    root_with_and_without_slash,
    mkdir,
    rmdir,
    post_create,
    put_range,
    put_range_bad_input,
    put_whole,
    get_and_head,
    get_ranges,
    getattr,
    stat_extension,
    readdir,
    readdir_attrs,
    mknod,
    open,
    chmod,
    chown,
    truncate,
    access,
    symlink_readlink,
    link,
    rename,
    fallocate,
    statfs,
    xattrs,
    utimens,
    nsec_extension,
    delete,
    fsync,
    bad_paths,
    trailing_slash,
    missing_and_malformed_headers,
    errors_are_described,
    keep_alive_after_errors,
    http11_without_host,
    non_utf8_names,
);

/// Runs every check (or those whose name contains `filter`); returns the
/// failures.
pub async fn run(t: &Target, filter: Option<&str>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, f) in all() {
        if filter.is_some_and(|flt| !name.contains(flt)) {
            continue;
        }
        let dir = format!("c_{name}");
        t.store.mkdir(&dir);
        ran += 1;
        if let Err(e) = f(t, &dir).await {
            failures.push(format!("{name} [{}]: {e}", t.store.describe()));
        }
    }
    eprintln!(
        "conformance: {ran} checks, {} failed on {}",
        failures.len(),
        t.store.describe()
    );
    failures
}

fn is_errno(r: &Resp, status: u16, errno: &str) -> CheckResult {
    ensure!(
        r.status.as_u16() == status && r.errno() == errno,
        "expected {status} {errno}, got {} {} ({:?})",
        r.status.as_u16(),
        r.errno(),
        String::from_utf8_lossy(&r.body)
    );
    Ok(())
}

fn is_status(r: &Resp, status: u16) -> CheckResult {
    ensure!(
        r.status.as_u16() == status,
        "expected {status}, got {} {} ({:?})",
        r.status.as_u16(),
        r.errno(),
        String::from_utf8_lossy(&r.body)
    );
    Ok(())
}

async fn options(t: &Target, _d: &str) -> CheckResult {
    let r = t.client.req("OPTIONS", "/", &[]).await;
    is_status(&r, 200)?;
    let allow = r.header("allow");
    for m in [
        "READDIR",
        "GETATTR",
        "MKNOD",
        "OPEN",
        "CHMOD",
        "CHOWN",
        "TRUNCATE",
        "ACCESS",
        "SYMLINK",
        "READLINK",
        "RMDIR",
        "MKDIR",
        "LINK",
        "RENAME",
        "FALLOCATE",
        "STATFS",
        "LISTXATTR",
        "GETXATTR",
        "SETXATTR",
        "REMOVEXATTR",
        "UTIMENS",
        "GET",
        "PUT",
        "POST",
        "DELETE",
        "HEAD",
        "OPTIONS",
        "FSYNC",
    ] {
        ensure!(
            allow.split(", ").any(|x| x == m),
            "Allow lacks {m}: {allow}"
        );
    }
    ensure_eq!(r.header("x-spock-version"), "0.1");
    let ext: Vec<&str> = r.header("x-spock-extensions").split(", ").collect();
    for e in ["errno", "readdir-attrs", "fsync", "stat", "nsec"] {
        ensure!(ext.contains(&e), "extensions lack {e}: {ext:?}");
    }
    ensure_eq!(r.header("content-length"), "0");
    Ok(())
}

async fn unknown_method(t: &Target, d: &str) -> CheckResult {
    for m in ["PATCH", "PROPFIND", "FOO"] {
        let r = t.client.req(m, &format!("/{d}"), &[]).await;
        is_errno(&r, 405, "ENOSYS")?;
        ensure!(r.header("allow").contains("READDIR"), "405 without Allow");
    }
    Ok(())
}

async fn root_with_and_without_slash(t: &Target, d: &str) -> CheckResult {
    // base is ".../fs": "" is "/fs", "/" is "/fs/".
    for p in ["", "/"] {
        let r = t.client.req("READDIR", p, &[]).await;
        is_status(&r, 200)?;
        let names: Vec<&[u8]> = r.body.split(|&b| b == b'\n').collect();
        ensure!(
            names.contains(&d.as_bytes()),
            "root listing via {p:?} lacks {d}"
        );
        let r = t.client.req("GETATTR", p, &[]).await;
        is_status(&r, 200)?;
        ensure_eq!(r.num("x-spock-mode").map(|m| m & 0o170000), Some(0o040000));
    }
    Ok(())
}

async fn mkdir(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    // Exact mode, whatever the server's umask.
    let r = t
        .client
        .req("MKDIR", &format!("/{d}/a"), &[("X-Spock-mode", "511")])
        .await;
    is_status(&r, 201)?;
    ensure_eq!(r.header("content-length"), "0");
    ensure_eq!(
        s.stat(&format!("{d}/a")).map(|x| (x.kind, x.perm)),
        Some((Kind::Dir, 0o777))
    );
    let r = t
        .client
        .req("MKDIR", &format!("/{d}/b"), &[("X-Spock-mode", "448")])
        .await;
    is_status(&r, 201)?;
    ensure_eq!(s.stat(&format!("{d}/b")).map(|x| x.perm), Some(0o700));
    let r = t
        .client
        .req("MKDIR", &format!("/{d}/b"), &[("X-Spock-mode", "448")])
        .await;
    is_errno(&r, 409, "EEXIST")?;
    let r = t
        .client
        .req("MKDIR", &format!("/{d}/nope/x"), &[("X-Spock-mode", "448")])
        .await;
    is_errno(&r, 404, "ENOENT")?;
    s.write(&format!("{d}/f"), b"x");
    let r = t
        .client
        .req("MKDIR", &format!("/{d}/f/x"), &[("X-Spock-mode", "448")])
        .await;
    is_errno(&r, 500, "ENOTDIR")?;
    let r = t.client.req("MKDIR", "/", &[("X-Spock-mode", "448")]).await;
    is_errno(&r, 409, "EEXIST")?;
    Ok(())
}

async fn rmdir(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.mkdir(&format!("{d}/empty"));
    s.mkdir(&format!("{d}/full/sub"));
    s.write(&format!("{d}/file"), b"x");
    is_status(
        &t.client.req("RMDIR", &format!("/{d}/empty"), &[]).await,
        200,
    )?;
    ensure!(s.stat(&format!("{d}/empty")).is_none(), "still there");
    is_errno(
        &t.client.req("RMDIR", &format!("/{d}/full"), &[]).await,
        412,
        "ENOTEMPTY",
    )?;
    ensure!(
        s.stat(&format!("{d}/full/sub")).is_some(),
        "removed contents"
    );
    is_errno(
        &t.client.req("RMDIR", &format!("/{d}/missing"), &[]).await,
        404,
        "ENOENT",
    )?;
    is_errno(
        &t.client.req("RMDIR", &format!("/{d}/file"), &[]).await,
        500,
        "ENOTDIR",
    )?;
    let r = t.client.req("RMDIR", "/", &[]).await;
    ensure!(!r.status.is_success(), "RMDIR of the root succeeded");
    Ok(())
}

async fn post_create(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    // 0444 -> created with S_IWUSR added: 0644, exactly.
    let r = t
        .client
        .req("POST", &format!("/{d}/f"), &[("X-Spock-mode", "292")])
        .await;
    is_status(&r, 201)?;
    ensure_eq!(
        s.stat(&format!("{d}/f")).map(|x| (x.kind, x.perm, x.size)),
        Some((Kind::File, 0o644, 0))
    );
    let r = t
        .client
        .req("POST", &format!("/{d}/g"), &[("X-Spock-mode", "438")])
        .await;
    is_status(&r, 201)?;
    ensure_eq!(s.stat(&format!("{d}/g")).map(|x| x.perm), Some(0o666));
    // creat() on an existing file truncates it and keeps its mode.
    s.write(&format!("{d}/g"), b"hello");
    let r = t
        .client
        .req("POST", &format!("/{d}/g"), &[("X-Spock-mode", "448")])
        .await;
    is_status(&r, 201)?;
    ensure_eq!(
        s.stat(&format!("{d}/g")).map(|x| (x.size, x.perm)),
        Some((0, 0o666))
    );
    s.mkdir(&format!("{d}/dir"));
    is_errno(
        &t.client
            .req("POST", &format!("/{d}/dir"), &[("X-Spock-mode", "448")])
            .await,
        403,
        "EISDIR",
    )?;
    is_errno(
        &t.client
            .req("POST", &format!("/{d}/no/f"), &[("X-Spock-mode", "448")])
            .await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn put_range(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    let f = format!("{d}/enterprise");
    s.write(&f, b"");
    // Spec form.
    let r = t
        .client
        .send(
            "PUT",
            &format!("/{f}"),
            &[("Content-Range", b"bytes=100-104")],
            "spock",
        )
        .await;
    is_status(&r, 200)?;
    let data = s.read(&f).unwrap_or_default();
    ensure_eq!(data.len(), 105);
    ensure!(data[..100].iter().all(|&b| b == 0), "hole not zero");
    ensure_eq!(&data[100..], b"spock");
    // Standard forms.
    let r = t
        .client
        .send(
            "PUT",
            &format!("/{f}"),
            &[("Content-Range", b"bytes 0-2/*")],
            "abc",
        )
        .await;
    is_status(&r, 200)?;
    let r = t
        .client
        .send(
            "PUT",
            &format!("/{f}"),
            &[("Content-Range", b"bytes 3-4/105")],
            "de",
        )
        .await;
    is_status(&r, 200)?;
    let data = s.read(&f).unwrap_or_default();
    ensure_eq!(&data[..5], b"abcde");
    ensure_eq!(data.len(), 105);
    // The original client's zero-length write: first-(first-1), no body.
    let r = t
        .client
        .send(
            "PUT",
            &format!("/{f}"),
            &[("Content-Range", b"bytes=10-9")],
            "",
        )
        .await;
    is_status(&r, 200)?;
    ensure_eq!(s.read(&f).map(|d| d.len()), Some(105));
    // Missing file: 404, nothing created.
    let r = t
        .client
        .send(
            "PUT",
            &format!("/{d}/missing"),
            &[("Content-Range", b"bytes=0-1")],
            "ab",
        )
        .await;
    is_errno(&r, 404, "ENOENT")?;
    ensure!(
        s.stat(&format!("{d}/missing")).is_none(),
        "created by ranged PUT"
    );
    // Directory.
    s.mkdir(&format!("{d}/dir"));
    let r = t
        .client
        .send(
            "PUT",
            &format!("/{d}/dir"),
            &[("Content-Range", b"bytes=0-1")],
            "ab",
        )
        .await;
    is_errno(&r, 403, "EISDIR")?;
    // A large write streams in chunks and lands exactly.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 7)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let cr = format!("bytes=1000-{}", 1000 + big.len() - 1);
    let r = t
        .client
        .send(
            "PUT",
            &format!("/{f}"),
            &[("Content-Range", cr.as_bytes())],
            big.clone(),
        )
        .await;
    is_status(&r, 200)?;
    let data = s.read(&f).unwrap_or_default();
    ensure_eq!(data.len(), 1000 + big.len());
    ensure!(data[1000..] == big[..], "large ranged write corrupted");
    Ok(())
}

async fn put_range_bad_input(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    let f = format!("{d}/f");
    s.write(&f, b"0123456789");
    let cases: &[(&[u8], &str)] = &[
        (b"bytes=0-4", "abc"),    // body shorter than range
        (b"bytes=0-1", "abcdef"), // body longer than range
        (b"bytes=5-3", "x"),      // reversed
        (b"bytes=a-b", "ab"),     // not numbers
        (b"bytes 0-1/1", "ab"),   // beyond stated total
        (b"items=0-1", "ab"),     // unit
        (b"bytes=-1", "a"),       // suffix makes no sense for PUT
        (b"bytes */10", "ab"),    // unsatisfied-range form
        (b"bytes=0-99999999999999999999", "ab"),
    ];
    for (cr, body) in cases {
        let r = t
            .client
            .send("PUT", &format!("/{f}"), &[("Content-Range", cr)], *body)
            .await;
        is_status(&r, 400)
            .map_err(|e| format!("Content-Range {:?}: {e}", String::from_utf8_lossy(cr)))?;
        ensure_eq!(
            s.read(&f),
            Some(b"0123456789".to_vec()),
            "file changed by {:?}",
            String::from_utf8_lossy(cr)
        );
    }
    Ok(())
}

async fn put_whole(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    let f = format!("{d}/whole");
    let r = t
        .client
        .send("PUT", &format!("/{f}"), &[], "first version")
        .await;
    is_status(&r, 201)?;
    ensure_eq!(s.read(&f), Some(b"first version".to_vec()));
    s.chmod(&f, 0o600);
    let r = t.client.send("PUT", &format!("/{f}"), &[], "v2").await;
    is_status(&r, 200)?;
    ensure_eq!(s.read(&f), Some(b"v2".to_vec()));
    ensure_eq!(
        s.stat(&f).map(|x| x.perm),
        Some(0o600),
        "mode of the replaced file kept"
    );
    let r = t.client.send("PUT", &format!("/{f}"), &[], "").await;
    is_status(&r, 200)?;
    ensure_eq!(s.read(&f), Some(vec![]));
    s.mkdir(&format!("{d}/dir"));
    is_errno(
        &t.client.send("PUT", &format!("/{d}/dir"), &[], "x").await,
        403,
        "EISDIR",
    )?;
    is_errno(
        &t.client.send("PUT", &format!("/{d}/no/x"), &[], "x").await,
        404,
        "ENOENT",
    )?;
    // No temporary left behind.
    let names = s.list(d).unwrap_or_default();
    ensure_eq!(names, vec![b"dir".to_vec(), b"whole".to_vec()]);
    Ok(())
}

async fn get_and_head(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    s.write(&format!("{d}/f"), &data);
    let r = t.client.req("GET", &format!("/{d}/f"), &[]).await;
    is_status(&r, 200)?;
    ensure_eq!(r.header("content-length"), data.len().to_string());
    ensure!(r.body[..] == data[..], "GET body differs");
    let r = t.client.req("HEAD", &format!("/{d}/f"), &[]).await;
    is_status(&r, 200)?;
    ensure_eq!(r.header("content-length"), data.len().to_string());
    ensure!(r.body.is_empty(), "HEAD with a body");
    let r = t
        .client
        .req("HEAD", &format!("/{d}/f"), &[("Range", "bytes=10-19")])
        .await;
    is_status(&r, 206)?;
    ensure_eq!(r.header("content-length"), "10");
    ensure_eq!(
        r.header("content-range"),
        format!("bytes 10-19/{}", data.len())
    );
    s.write(&format!("{d}/empty"), b"");
    let r = t.client.req("GET", &format!("/{d}/empty"), &[]).await;
    is_status(&r, 200)?;
    ensure!(r.body.is_empty(), "empty file body");
    s.mkdir(&format!("{d}/dir"));
    is_errno(
        &t.client.req("GET", &format!("/{d}/dir"), &[]).await,
        403,
        "EISDIR",
    )?;
    is_errno(
        &t.client.req("GET", &format!("/{d}/none"), &[]).await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn get_ranges(t: &Target, d: &str) -> CheckResult {
    let f = format!("/{d}/f");
    t.store.write(&f[1..], b"0123456789");
    let cases: &[(&str, u16, &str, &[u8])] = &[
        ("bytes=0-3", 206, "bytes 0-3/10", b"0123"),
        ("bytes=5-", 206, "bytes 5-9/10", b"56789"),
        ("bytes=-3", 206, "bytes 7-9/10", b"789"),
        ("bytes=8-100", 206, "bytes 8-9/10", b"89"),
        ("bytes=2-4, 6-7", 206, "bytes 2-4/10", b"234"),
        // At or past the end: empty 206, never 416, never other bytes.
        ("bytes=10-20", 206, "bytes */10", b""),
        ("bytes=100-4195", 206, "bytes */10", b""),
        ("bytes=-0", 206, "bytes */10", b""),
        // The original client's 0-byte read.
        ("bytes=5-4", 206, "bytes */10", b""),
    ];
    for (range, status, cr, body) in cases {
        let r = t.client.req("GET", &f, &[("Range", range)]).await;
        ensure_eq!(r.status.as_u16(), *status, "Range {range}");
        ensure_eq!(r.header("content-range"), *cr, "Range {range}");
        ensure_eq!(&r.body[..], *body, "Range {range}");
        ensure_eq!(
            r.header("content-length"),
            body.len().to_string(),
            "Range {range}"
        );
    }
    for bad in ["bytes=3-1", "bytes=x-1", "lines=1-2", "bytes=", "bytes=-"] {
        let r = t.client.req("GET", &f, &[("Range", bad)]).await;
        is_status(&r, 400).map_err(|e| format!("Range {bad}: {e}"))?;
    }
    Ok(())
}

/// The `stat` extension: `X-Spock-stat: 1` on a call that creates or
/// changes an entry adds the entry's GETATTR headers to the success
/// response; without it, or on calls that remove, nothing is added.
async fn stat_extension(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    let with = [("x-spock-stat", "1")];
    let r = t
        .client
        .req(
            "POST",
            &format!("/{d}/f"),
            &[("x-spock-mode", "420"), with[0]],
        )
        .await;
    is_status(&r, 201)?;
    let st = s.stat(&format!("{d}/f")).ok_or("POST created nothing")?;
    ensure_eq!(r.num("x-spock-mode"), Some(0o100644));
    ensure_eq!(r.num("x-spock-size"), Some(0));
    ensure_eq!(r.num("x-spock-ino"), Some(st.ino as i128));
    ensure_eq!(r.num("x-spock-nlink"), Some(1));
    ensure!(r.num("x-spock-mtime").is_some(), "no x-spock-mtime");
    let r = t
        .client
        .req(
            "CHMOD",
            &format!("/{d}/f"),
            &[("x-spock-mode", "384"), with[0]],
        )
        .await;
    is_status(&r, 200)?;
    ensure_eq!(r.num("x-spock-mode"), Some(0o100600));
    let r = t
        .client
        .req(
            "TRUNCATE",
            &format!("/{d}/f"),
            &[("x-spock-size", "10"), with[0]],
        )
        .await;
    is_status(&r, 200)?;
    ensure_eq!(r.num("x-spock-size"), Some(10));
    let r = t
        .client
        .req(
            "MKDIR",
            &format!("/{d}/sub"),
            &[("x-spock-mode", "448"), with[0]],
        )
        .await;
    is_status(&r, 201)?;
    ensure_eq!(r.num("x-spock-mode"), Some(0o40700));
    let r = t
        .client
        .req(
            "LINK",
            &format!("/{d}/g"),
            &[("x-spock-target", &format!("/{d}/f")), with[0]],
        )
        .await;
    is_status(&r, 201)?;
    ensure_eq!(r.num("x-spock-nlink"), Some(2));
    let r = t
        .client
        .req(
            "SYMLINK",
            &format!("/{d}/l"),
            &[("x-spock-target", "f"), with[0]],
        )
        .await;
    is_status(&r, 201)?;
    ensure_eq!(r.num("x-spock-mode").map(|m| m & 0o170000), Some(0o120000));
    ensure_eq!(r.num("x-spock-size"), Some(1));
    // Without the header: the plain spec answer.
    let r = t
        .client
        .req("CHMOD", &format!("/{d}/f"), &[("x-spock-mode", "420")])
        .await;
    is_status(&r, 200)?;
    ensure!(r.num("x-spock-mode").is_none(), "stat without asking");
    // Removals and errors carry no attributes.
    let r = t.client.req("DELETE", &format!("/{d}/g"), &with).await;
    is_status(&r, 200)?;
    ensure!(r.num("x-spock-mode").is_none(), "stat of a removed entry");
    let r = t
        .client
        .req(
            "CHMOD",
            &format!("/{d}/none"),
            &[("x-spock-mode", "420"), with[0]],
        )
        .await;
    is_errno(&r, 404, "ENOENT")?;
    ensure!(r.num("x-spock-mode").is_none(), "stat on an error");
    Ok(())
}

async fn getattr(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"hello world");
    s.chmod(&format!("{d}/f"), 0o640);
    let r = t.client.req("GETATTR", &format!("/{d}/f"), &[]).await;
    is_status(&r, 200)?;
    let st = s.stat(&format!("{d}/f")).ok_or("no stat")?;
    ensure_eq!(r.num("x-spock-mode"), Some(0o100640));
    ensure_eq!(r.num("x-spock-size"), Some(11));
    ensure_eq!(r.num("x-spock-nlink"), Some(1));
    ensure_eq!(r.num("x-spock-ino"), Some(st.ino as i128));
    ensure_eq!(r.num("x-spock-uid"), Some(st.uid as i128));
    ensure_eq!(r.num("x-spock-mtime"), Some(st.mtime as i128));
    for h in [
        "x-spock-gid",
        "x-spock-atime",
        "x-spock-ctime",
        "x-spock-blocks",
        "x-spock-dev",
    ] {
        ensure!(
            r.num(h).is_some(),
            "missing or non-numeric {h}: {:?}",
            r.header(h)
        );
    }
    ensure_eq!(r.header("content-length"), "0");
    // lstat: a symlink is reported as itself, even dangling.
    s.symlink(b"/nowhere/at/all", &format!("{d}/l"));
    let r = t.client.req("GETATTR", &format!("/{d}/l"), &[]).await;
    is_status(&r, 200)?;
    ensure_eq!(r.num("x-spock-mode").map(|m| m & 0o170000), Some(0o120000));
    ensure_eq!(r.num("x-spock-size"), Some(15));
    is_errno(
        &t.client.req("GETATTR", &format!("/{d}/none"), &[]).await,
        404,
        "ENOENT",
    )?;
    is_errno(
        &t.client.req("GETATTR", &format!("/{d}/f/x"), &[]).await,
        500,
        "ENOTDIR",
    )?;
    Ok(())
}

async fn readdir(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/file001"), b"");
    s.write(&format!("{d}/file002"), b"");
    s.mkdir(&format!("{d}/sub"));
    let r = t.client.req("READDIR", &format!("/{d}"), &[]).await;
    is_status(&r, 200)?;
    ensure!(r.body.ends_with(b"\n"), "last line not terminated");
    let lines: Vec<&[u8]> = r.body[..r.body.len() - 1].split(|&b| b == b'\n').collect();
    ensure_eq!(&lines[..2], &[&b"."[..], &b".."[..]], "dot entries first");
    let mut rest: Vec<&[u8]> = lines[2..].to_vec();
    rest.sort();
    ensure_eq!(rest, vec![&b"file001"[..], &b"file002"[..], &b"sub"[..]]);
    ensure_eq!(r.header("content-length"), r.body.len().to_string());
    s.mkdir(&format!("{d}/empty"));
    let r = t.client.req("READDIR", &format!("/{d}/empty"), &[]).await;
    ensure_eq!(&r.body[..], b".\n..\n");
    is_errno(
        &t.client.req("READDIR", &format!("/{d}/file001"), &[]).await,
        500,
        "ENOTDIR",
    )?;
    is_errno(
        &t.client.req("READDIR", &format!("/{d}/none"), &[]).await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn readdir_attrs(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/a file"), b"12345");
    s.chmod(&format!("{d}/a file"), 0o604);
    s.mkdir(&format!("{d}/sub"));
    s.symlink(b"target", &format!("{d}/ln"));
    let r = t
        .client
        .req("READDIR", &format!("/{d}"), &[("X-Spock-readdir", "attrs")])
        .await;
    is_status(&r, 200)?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let mut seen = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(11, ' ').collect();
        ensure_eq!(fields.len(), 11, "line {line:?}");
        let nums: Vec<i128> = fields[..10]
            .iter()
            .map(|f| f.parse().unwrap_or(-999))
            .collect();
        ensure!(
            nums.iter().all(|&n| n != -999),
            "non-numeric field in {line:?}"
        );
        let name = fields[10];
        let st = s
            .stat(&format!("{d}/{name}"))
            .ok_or(format!("{name} not in store"))?;
        ensure_eq!(nums[0] as u32 & 0o7777, st.perm, "{name} perm");
        ensure_eq!(nums[1] as u64, st.ino, "{name} ino");
        ensure_eq!(nums[5] as u64, st.size, "{name} size");
        ensure_eq!(nums[8] as i64, st.mtime, "{name} mtime");
        seen.push(name.to_owned());
    }
    seen.sort();
    ensure_eq!(
        seen,
        vec!["a file".to_owned(), "ln".to_owned(), "sub".to_owned()]
    );
    let r = t
        .client
        .req("READDIR", &format!("/{d}"), &[("X-Spock-readdir", "bogus")])
        .await;
    is_status(&r, 400)?;
    Ok(())
}

async fn mknod(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    // 4480 = S_IFIFO | 0600 (the spec's example).
    let r = t
        .client
        .req(
            "MKNOD",
            &format!("/{d}/fifo"),
            &[("X-Spock-mode", "4480"), ("X-Spock-dev", "0")],
        )
        .await;
    is_status(&r, 201)?;
    ensure_eq!(
        s.stat(&format!("{d}/fifo")).map(|x| (x.kind, x.perm)),
        Some((Kind::Fifo, 0o600))
    );
    let r = t
        .client
        .req(
            "MKNOD",
            &format!("/{d}/fifo2"),
            &[
                ("X-Spock-mode", &(0o010777).to_string()),
                ("X-Spock-dev", "0"),
            ],
        )
        .await;
    is_status(&r, 201)?;
    ensure_eq!(
        s.stat(&format!("{d}/fifo2")).map(|x| x.perm),
        Some(0o777),
        "mode applied exactly"
    );
    let r = t
        .client
        .req(
            "MKNOD",
            &format!("/{d}/reg"),
            &[
                ("X-Spock-mode", &(0o100644).to_string()),
                ("X-Spock-dev", "0"),
            ],
        )
        .await;
    is_status(&r, 201)?;
    ensure_eq!(
        s.stat(&format!("{d}/reg")).map(|x| x.kind),
        Some(Kind::File)
    );
    is_errno(
        &t.client
            .req(
                "MKNOD",
                &format!("/{d}/fifo"),
                &[("X-Spock-mode", "4480"), ("X-Spock-dev", "0")],
            )
            .await,
        409,
        "EEXIST",
    )?;
    // Device nodes are never created.
    for m in [0o020600, 0o060600] {
        let r = t
            .client
            .req(
                "MKNOD",
                &format!("/{d}/dev"),
                &[("X-Spock-mode", &m.to_string()), ("X-Spock-dev", "2049")],
            )
            .await;
        is_errno(&r, 403, "EPERM")?;
        ensure!(s.stat(&format!("{d}/dev")).is_none(), "device created");
    }
    Ok(())
}

async fn open(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"x");
    s.mkdir(&format!("{d}/dir"));
    for flag in ["0", "1", "2"] {
        is_status(
            &t.client
                .req("OPEN", &format!("/{d}/f"), &[("X-Spock-flag", flag)])
                .await,
            200,
        )?;
    }
    is_status(
        &t.client
            .req("OPEN", &format!("/{d}/dir"), &[("X-Spock-flag", "0")])
            .await,
        200,
    )?;
    is_errno(
        &t.client
            .req("OPEN", &format!("/{d}/dir"), &[("X-Spock-flag", "1")])
            .await,
        403,
        "EISDIR",
    )?;
    is_errno(
        &t.client
            .req("OPEN", &format!("/{d}/none"), &[("X-Spock-flag", "0")])
            .await,
        404,
        "ENOENT",
    )?;
    ensure_eq!(
        s.read(&format!("{d}/f")),
        Some(b"x".to_vec()),
        "OPEN changed the file"
    );
    Ok(())
}

async fn chmod(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"x");
    // 438 = 0666 (the spec's example), and setuid/setgid/sticky bits: by
    // default (the mount's nosuid policy) set-ID bits never land on a file.
    for mode in [0o666, 0o0, 0o4755, 0o2755, 0o1777, 0o640] {
        let r = t
            .client
            .req(
                "CHMOD",
                &format!("/{d}/f"),
                &[("X-Spock-mode", &mode.to_string())],
            )
            .await;
        is_status(&r, 200)?;
        ensure_eq!(
            s.stat(&format!("{d}/f")).map(|x| x.perm),
            Some(mode & !0o6000)
        );
    }
    s.mkdir(&format!("{d}/dir"));
    is_status(
        &t.client
            .req("CHMOD", &format!("/{d}/dir"), &[("X-Spock-mode", "448")])
            .await,
        200,
    )?;
    ensure_eq!(s.stat(&format!("{d}/dir")).map(|x| x.perm), Some(0o700));
    // A directory keeps its set-group-ID bit (group inheritance).
    is_status(
        &t.client
            .req("CHMOD", &format!("/{d}/dir"), &[("X-Spock-mode", "1517")])
            .await,
        200,
    )?;
    ensure_eq!(s.stat(&format!("{d}/dir")).map(|x| x.perm), Some(0o2755));
    is_errno(
        &t.client
            .req("CHMOD", &format!("/{d}/none"), &[("X-Spock-mode", "448")])
            .await,
        404,
        "ENOENT",
    )?;
    // chmod never follows a final symlink.
    s.symlink(b"f", &format!("{d}/ln"));
    is_errno(
        &t.client
            .req("CHMOD", &format!("/{d}/ln"), &[("X-Spock-mode", "511")])
            .await,
        405,
        "EOPNOTSUPP",
    )?;
    ensure_eq!(s.stat(&format!("{d}/f")).map(|x| x.perm), Some(0o640));
    Ok(())
}

async fn chown(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"x");
    let st = s.stat(&format!("{d}/f")).ok_or("stat")?;
    let uid = st.uid.to_string();
    is_status(
        &t.client
            .req(
                "CHOWN",
                &format!("/{d}/f"),
                &[("X-Spock-uid", &uid), ("X-Spock-gid", "-1")],
            )
            .await,
        200,
    )?;
    // The original client sends (uid_t)-1 as 4294967295: unchanged.
    is_status(
        &t.client
            .req(
                "CHOWN",
                &format!("/{d}/f"),
                &[("X-Spock-uid", "4294967295"), ("X-Spock-gid", "4294967295")],
            )
            .await,
        200,
    )?;
    ensure_eq!(s.stat(&format!("{d}/f")).map(|x| x.uid), Some(st.uid));
    is_errno(
        &t.client
            .req(
                "CHOWN",
                &format!("/{d}/none"),
                &[("X-Spock-uid", &uid), ("X-Spock-gid", "-1")],
            )
            .await,
        404,
        "ENOENT",
    )?;
    is_status(
        &t.client
            .req(
                "CHOWN",
                &format!("/{d}/f"),
                &[("X-Spock-uid", "4294967296"), ("X-Spock-gid", "0")],
            )
            .await,
        400,
    )?;
    Ok(())
}

async fn truncate(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"0123456789");
    is_status(
        &t.client
            .req("TRUNCATE", &format!("/{d}/f"), &[("X-Spock-size", "4")])
            .await,
        200,
    )?;
    ensure_eq!(s.read(&format!("{d}/f")), Some(b"0123".to_vec()));
    is_status(
        &t.client
            .req("TRUNCATE", &format!("/{d}/f"), &[("X-Spock-size", "100")])
            .await,
        200,
    )?;
    ensure_eq!(s.stat(&format!("{d}/f")).map(|x| x.size), Some(100));
    is_errno(
        &t.client
            .req("TRUNCATE", &format!("/{d}/none"), &[("X-Spock-size", "1")])
            .await,
        404,
        "ENOENT",
    )?;
    s.mkdir(&format!("{d}/dir"));
    is_errno(
        &t.client
            .req("TRUNCATE", &format!("/{d}/dir"), &[("X-Spock-size", "1")])
            .await,
        403,
        "EISDIR",
    )?;
    Ok(())
}

async fn access(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"x");
    s.chmod(&format!("{d}/f"), 0o644);
    for m in ["0", "4", "6"] {
        is_status(
            &t.client
                .req("ACCESS", &format!("/{d}/f"), &[("X-Spock-mode", m)])
                .await,
            200,
        )?;
    }
    // Nobody may execute a file without any x bit, not even root.
    is_errno(
        &t.client
            .req("ACCESS", &format!("/{d}/f"), &[("X-Spock-mode", "1")])
            .await,
        403,
        "EACCES",
    )?;
    s.chmod(&format!("{d}/f"), 0o755);
    is_status(
        &t.client
            .req("ACCESS", &format!("/{d}/f"), &[("X-Spock-mode", "1")])
            .await,
        200,
    )?;
    is_errno(
        &t.client
            .req("ACCESS", &format!("/{d}/none"), &[("X-Spock-mode", "0")])
            .await,
        404,
        "ENOENT",
    )?;
    is_status(
        &t.client
            .req("ACCESS", &format!("/{d}/f"), &[("X-Spock-mode", "8")])
            .await,
        400,
    )?;
    Ok(())
}

async fn symlink_readlink(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    let targets: &[&[u8]] = &[
        b"/opt/foobar",
        b"../../../../etc/passwd",
        b"relative/x",
        b"with space",
        b"\xff\xferaw",
    ];
    for (i, target) in targets.iter().enumerate() {
        let p = format!("{d}/l{i}");
        let r = t
            .client
            .send(
                "SYMLINK",
                &format!("/{p}"),
                &[("X-Spock-target", target)],
                "",
            )
            .await;
        is_status(&r, 201)?;
        ensure_eq!(s.readlink(&p), Some(target.to_vec()), "stored verbatim");
        let r = t.client.req("READLINK", &format!("/{p}"), &[]).await;
        is_status(&r, 200)?;
        ensure_eq!(&r.body[..], *target);
    }
    let r = t
        .client
        .req("SYMLINK", &format!("/{d}/l0"), &[("X-Spock-target", "x")])
        .await;
    is_errno(&r, 409, "EEXIST")?;
    s.write(&format!("{d}/f"), b"x");
    is_errno(
        &t.client.req("READLINK", &format!("/{d}/f"), &[]).await,
        500,
        "EINVAL",
    )?;
    is_errno(
        &t.client.req("READLINK", &format!("/{d}/none"), &[]).await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn link(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.mkdir(&format!("{d}/x/y"));
    s.write(&format!("{d}/x/y/f"), b"data");
    let r = t
        .client
        .req(
            "LINK",
            &format!("/{d}/h"),
            &[("X-Spock-target", &format!("/{d}/x/y/f"))],
        )
        .await;
    is_status(&r, 201)?;
    let a = s.stat(&format!("{d}/h")).ok_or("no link")?;
    let b = s.stat(&format!("{d}/x/y/f")).ok_or("no source")?;
    ensure_eq!(a.ino, b.ino);
    ensure_eq!(a.nlink, 2);
    is_errno(
        &t.client
            .req(
                "LINK",
                &format!("/{d}/h"),
                &[("X-Spock-target", &format!("/{d}/x/y/f"))],
            )
            .await,
        409,
        "EEXIST",
    )?;
    is_errno(
        &t.client
            .req(
                "LINK",
                &format!("/{d}/h2"),
                &[("X-Spock-target", &format!("/{d}/none"))],
            )
            .await,
        404,
        "ENOENT",
    )?;
    is_errno(
        &t.client
            .req(
                "LINK",
                &format!("/{d}/h3"),
                &[("X-Spock-target", &format!("/{d}/x"))],
            )
            .await,
        403,
        "EPERM",
    )?;
    is_status(
        &t.client
            .req(
                "LINK",
                &format!("/{d}/h4"),
                &[("X-Spock-target", &format!("/{d}/../x"))],
            )
            .await,
        400,
    )?;
    is_status(
        &t.client
            .req(
                "LINK",
                &format!("/{d}/h4"),
                &[("X-Spock-target", "relative")],
            )
            .await,
        400,
    )?;
    ensure!(
        s.stat(&format!("{d}/h4")).is_none(),
        "created on bad target"
    );
    Ok(())
}

async fn rename(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.mkdir(&format!("{d}/foobar"));
    s.write(&format!("{d}/foobar/kratos"), b"k");
    // RENAME /foobar/deimos, X-Spock-target: /foobar/kratos renames kratos to deimos.
    let r = t
        .client
        .req(
            "RENAME",
            &format!("/{d}/foobar/deimos"),
            &[("X-Spock-target", &format!("/{d}/foobar/kratos"))],
        )
        .await;
    is_status(&r, 200)?;
    ensure!(
        s.stat(&format!("{d}/foobar/kratos")).is_none(),
        "source still there"
    );
    ensure_eq!(s.read(&format!("{d}/foobar/deimos")), Some(b"k".to_vec()));
    // Into a subdirectory, over an existing file.
    s.mkdir(&format!("{d}/sub"));
    s.write(&format!("{d}/sub/old"), b"old");
    is_status(
        &t.client
            .req(
                "RENAME",
                &format!("/{d}/sub/old"),
                &[("X-Spock-target", &format!("/{d}/foobar/deimos"))],
            )
            .await,
        200,
    )?;
    ensure_eq!(s.read(&format!("{d}/sub/old")), Some(b"k".to_vec()));
    is_errno(
        &t.client
            .req(
                "RENAME",
                &format!("/{d}/x"),
                &[("X-Spock-target", &format!("/{d}/none"))],
            )
            .await,
        404,
        "ENOENT",
    )?;
    s.mkdir(&format!("{d}/full/z"));
    s.mkdir(&format!("{d}/e"));
    is_errno(
        &t.client
            .req(
                "RENAME",
                &format!("/{d}/full"),
                &[("X-Spock-target", &format!("/{d}/e"))],
            )
            .await,
        412,
        "ENOTEMPTY",
    )?;
    is_status(
        &t.client
            .req(
                "RENAME",
                &format!("/{d}/y"),
                &[("X-Spock-target", "/../etc")],
            )
            .await,
        400,
    )?;
    is_status(&t.client.req("RENAME", &format!("/{d}/y"), &[]).await, 400)?;
    Ok(())
}

async fn fallocate(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"");
    let r = t
        .client
        .req(
            "FALLOCATE",
            &format!("/{d}/f"),
            &[("X-Spock-mode", "0"), ("Range", "bytes=400-500")],
        )
        .await;
    is_status(&r, 200)?;
    ensure_eq!(s.stat(&format!("{d}/f")).map(|x| x.size), Some(501));
    is_status(
        &t.client
            .req("FALLOCATE", &format!("/{d}/f"), &[("X-Spock-mode", "0")])
            .await,
        400,
    )?;
    is_status(
        &t.client
            .req(
                "FALLOCATE",
                &format!("/{d}/f"),
                &[("X-Spock-mode", "0"), ("Range", "bytes=5-")],
            )
            .await,
        400,
    )?;
    is_errno(
        &t.client
            .req(
                "FALLOCATE",
                &format!("/{d}/none"),
                &[("X-Spock-mode", "0"), ("Range", "bytes=0-1")],
            )
            .await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn statfs(t: &Target, d: &str) -> CheckResult {
    let r = t.client.req("STATFS", &format!("/{d}"), &[]).await;
    is_status(&r, 200)?;
    for h in [
        "bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree", "favail", "fsid", "flag",
        "namemax",
    ] {
        ensure!(
            r.num(&format!("x-spock-{h}")).is_some(),
            "missing X-Spock-{h}"
        );
    }
    ensure!(r.num("x-spock-bsize").unwrap_or(0) > 0, "bsize 0");
    ensure!(r.num("x-spock-namemax").unwrap_or(0) >= 255, "namemax");
    is_errno(
        &t.client.req("STATFS", &format!("/{d}/none"), &[]).await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn xattrs(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    if !s.xattrs_supported() {
        eprintln!("xattrs: store has no user xattrs; skipping (CI=true fails instead)");
        ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no user xattr support in CI"
        );
        return Ok(());
    }
    let f = format!("/{d}/foobar");
    s.write(&f[1..], b"");
    let set = |name: &'static str, flag: &'static str, val: &'static str| {
        let f = f.clone();
        async move {
            t.client
                .send(
                    "SETXATTR",
                    &f,
                    &[
                        ("X-Spock-target", name.as_bytes()),
                        ("X-Spock-flag", flag.as_bytes()),
                    ],
                    val,
                )
                .await
        }
    };
    is_status(&set("user.foo", "0", "hello").await, 200)?;
    ensure_eq!(s.getxattr(&f[1..], "user.foo"), Some(b"hello".to_vec()));
    is_status(&set("user.bar", "1", "").await, 200)?;
    is_errno(&set("user.foo", "1", "x").await, 409, "EEXIST")?;
    is_errno(&set("user.nope", "2", "x").await, 415, "ENODATA")?;
    is_status(&set("user.foo", "2", "hello").await, 200)?;
    // Probe with size 0, then fetch.
    let r = t
        .client
        .req(
            "GETXATTR",
            &f,
            &[("X-Spock-target", "user.foo"), ("X-Spock-size", "0")],
        )
        .await;
    is_status(&r, 200)?;
    ensure_eq!(r.num("x-spock-size"), Some(5));
    ensure!(r.body.is_empty(), "size probe with body");
    let r = t
        .client
        .req(
            "GETXATTR",
            &f,
            &[("X-Spock-target", "user.foo"), ("X-Spock-size", "5")],
        )
        .await;
    ensure_eq!(&r.body[..], b"hello");
    is_errno(
        &t.client
            .req(
                "GETXATTR",
                &f,
                &[("X-Spock-target", "user.foo"), ("X-Spock-size", "4")],
            )
            .await,
        413,
        "ERANGE",
    )?;
    is_errno(
        &t.client
            .req(
                "GETXATTR",
                &f,
                &[("X-Spock-target", "user.none"), ("X-Spock-size", "64")],
            )
            .await,
        415,
        "ENODATA",
    )?;
    let r = t
        .client
        .req("LISTXATTR", &f, &[("X-Spock-size", "0")])
        .await;
    is_status(&r, 200)?;
    let r2 = t
        .client
        .req("LISTXATTR", &f, &[("X-Spock-size", "4096")])
        .await;
    is_status(&r2, 200)?;
    ensure_eq!(r.num("x-spock-size"), Some(r2.body.len() as i128));
    let mut names: Vec<&[u8]> = r2
        .body
        .split(|&b| b == b'\n')
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    ensure!(
        names.contains(&&b"user.bar"[..]) && names.contains(&&b"user.foo"[..]),
        "list {names:?}"
    );
    is_errno(
        &t.client
            .req("LISTXATTR", &f, &[("X-Spock-size", "3")])
            .await,
        413,
        "ERANGE",
    )?;
    is_status(
        &t.client
            .req("REMOVEXATTR", &f, &[("X-Spock-target", "user.foo")])
            .await,
        200,
    )?;
    ensure_eq!(s.getxattr(&f[1..], "user.foo"), None);
    is_errno(
        &t.client
            .req("REMOVEXATTR", &f, &[("X-Spock-target", "user.foo")])
            .await,
        415,
        "ENODATA",
    )?;
    // Over the server's 64 KiB limit: 413 and not stored.
    let big = vec![b'v'; 64 * 1024 + 1];
    let r = t
        .client
        .send(
            "SETXATTR",
            &f,
            &[("X-Spock-target", b"user.big"), ("X-Spock-flag", b"0")],
            big,
        )
        .await;
    ensure_eq!(r.status.as_u16(), 413);
    ensure_eq!(s.getxattr(&f[1..], "user.big"), None);
    is_status(
        &t.client
            .req("GETXATTR", &f, &[("X-Spock-size", "10")])
            .await,
        400,
    )?;
    is_errno(
        &t.client
            .req(
                "GETXATTR",
                &format!("/{d}/none"),
                &[("X-Spock-target", "user.foo"), ("X-Spock-size", "0")],
            )
            .await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn utimens(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/deimos"), b"");
    let r = t
        .client
        .req(
            "UTIMENS",
            &format!("/{d}/deimos"),
            &[("X-Spock-atime", "1"), ("X-Spock-mtime", "1420481543")],
        )
        .await;
    is_status(&r, 200)?;
    let st = s.stat(&format!("{d}/deimos")).ok_or("stat")?;
    ensure_eq!((st.atime, st.mtime), (1, 1420481543));
    is_status(
        &t.client
            .req(
                "UTIMENS",
                &format!("/{d}/deimos"),
                &[("X-Spock-atime", "1")],
            )
            .await,
        400,
    )?;
    is_errno(
        &t.client
            .req(
                "UTIMENS",
                &format!("/{d}/none"),
                &[("X-Spock-atime", "1"), ("X-Spock-mtime", "1")],
            )
            .await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

/// The `nsec` extension: nanoseconds in GETATTR, the `stat` and
/// `parent-stat` answers and `X-Spock-readdir: attrs-nsec` listings;
/// UTIMENS with nanoseconds, `now` and `omit`. The 0.1 forms are unchanged.
async fn nsec_extension(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    let f = format!("{d}/f");
    s.write(&f, b"x");
    let utimens = |hs: &'static [(&'static str, &'static str)]| {
        let c = t.client.clone();
        let p = format!("/{f}");
        async move { c.req("UTIMENS", &p, hs).await }
    };
    let r = utimens(&[
        ("X-Spock-atime", "1"),
        ("X-Spock-atime-nsec", "5"),
        ("X-Spock-mtime", "1420481543"),
        ("X-Spock-mtime-nsec", "999999999"),
    ])
    .await;
    is_status(&r, 200)?;
    let st = s.stat(&f).ok_or("stat")?;
    ensure_eq!(
        (st.atime, st.atime_nsec, st.mtime, st.mtime_nsec),
        (1, 5, 1420481543, 999999999)
    );
    let r = t.client.req("GETATTR", &format!("/{f}"), &[]).await;
    is_status(&r, 200)?;
    ensure_eq!(r.num("x-spock-atime"), Some(1));
    ensure_eq!(r.num("x-spock-atime-nsec"), Some(5));
    ensure_eq!(r.num("x-spock-mtime"), Some(1420481543));
    ensure_eq!(r.num("x-spock-mtime-nsec"), Some(999999999));
    ensure!(
        r.num("x-spock-ctime-nsec")
            .is_some_and(|n| (0..1_000_000_000).contains(&n)),
        "x-spock-ctime-nsec {:?}",
        r.header("x-spock-ctime-nsec")
    );

    // The 13-field listing; `attrs` keeps its ten.
    for (form, fields) in [("attrs-nsec", 13), ("attrs", 10)] {
        let r = t
            .client
            .req("READDIR", &format!("/{d}"), &[("X-Spock-readdir", form)])
            .await;
        is_status(&r, 200)?;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let line = text.lines().next().ok_or("empty listing")?;
        let v: Vec<&str> = line.splitn(fields + 1, ' ').collect();
        ensure_eq!(v.len(), fields + 1, "{form}: {line:?}");
        ensure_eq!(v[fields], "f", "{form}: {line:?}");
        ensure_eq!(v[8], "1420481543", "{form}: {line:?}");
        if fields == 13 {
            ensure_eq!((v[10], v[11]), ("5", "999999999"), "{line:?}");
        }
    }

    // omit and now: atime kept to the nanosecond, mtime the server's clock.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let r = utimens(&[("X-Spock-atime", "omit"), ("X-Spock-mtime", "now")]).await;
    is_status(&r, 200)?;
    let st = s.stat(&f).ok_or("stat")?;
    ensure_eq!((st.atime, st.atime_nsec), (1, 5));
    ensure!(
        st.mtime >= before && st.mtime <= before + 60,
        "mtime {} after 'now' at {before}",
        st.mtime
    );
    // Both omitted: nothing changes (and nothing is looked up).
    is_status(
        &utimens(&[("X-Spock-atime", "omit"), ("X-Spock-mtime", "omit")]).await,
        200,
    )?;
    ensure_eq!(s.stat(&f).map(|x| (x.atime, x.atime_nsec)), Some((1, 5)));
    // A plain 0.1 UTIMENS sets whole seconds.
    is_status(
        &utimens(&[("X-Spock-atime", "7"), ("X-Spock-mtime", "8")]).await,
        200,
    )?;
    let st = s.stat(&f).ok_or("stat")?;
    ensure_eq!(
        (st.atime, st.atime_nsec, st.mtime, st.mtime_nsec),
        (7, 0, 8, 0)
    );
    // With the stat extension the answer carries the nanoseconds.
    let r = t
        .client
        .req(
            "UTIMENS",
            &format!("/{f}"),
            &[
                ("X-Spock-atime", "9"),
                ("X-Spock-mtime", "10"),
                ("X-Spock-mtime-nsec", "11"),
                ("X-Spock-stat", "1"),
            ],
        )
        .await;
    is_status(&r, 200)?;
    ensure_eq!(r.num("x-spock-mtime-nsec"), Some(11));
    ensure_eq!(r.num("x-spock-atime-nsec"), Some(0));
    // parent-stat: the directory's nanoseconds next to X-Spock-parent.
    let r = t
        .client
        .req(
            "POST",
            &format!("/{d}/g"),
            &[("X-Spock-mode", "420"), ("X-Spock-stat", "1")],
        )
        .await;
    is_status(&r, 201)?;
    let dir = s.stat(d).ok_or("stat dir")?;
    let parent: Vec<&str> = r.header("x-spock-parent").split(' ').collect();
    let nsec: Vec<&str> = r.header("x-spock-parent-nsec").split(' ').collect();
    ensure_eq!(
        parent.get(8).map(|m| m.to_string()),
        Some(dir.mtime.to_string())
    );
    ensure_eq!(nsec.len(), 3, "{nsec:?}");
    ensure_eq!(nsec[1], dir.mtime_nsec.to_string(), "{nsec:?}");

    // Malformed: nanoseconds with now/omit or out of range, words that
    // are not now/omit.
    for hs in [
        &[
            ("X-Spock-atime", "now"),
            ("X-Spock-atime-nsec", "1"),
            ("X-Spock-mtime", "1"),
        ][..],
        &[
            ("X-Spock-atime", "1"),
            ("X-Spock-mtime", "1"),
            ("X-Spock-mtime-nsec", "1000000000"),
        ],
        &[
            ("X-Spock-atime", "1"),
            ("X-Spock-mtime", "1"),
            ("X-Spock-atime-nsec", "-1"),
        ],
        &[("X-Spock-atime", "later"), ("X-Spock-mtime", "1")],
        &[("X-Spock-atime", "1"), ("X-Spock-mtime", "")],
    ] {
        let r = t.client.req("UTIMENS", &format!("/{f}"), hs).await;
        ensure_eq!(r.status.as_u16(), 400, "{hs:?}");
    }
    ensure_eq!(s.stat(&f).map(|x| (x.atime, x.mtime)), Some((9, 10)));
    let r = t
        .client
        .req("READDIR", &format!("/{d}"), &[("X-Spock-readdir", "nsec")])
        .await;
    is_status(&r, 400)?;
    Ok(())
}

async fn delete(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"x");
    is_status(&t.client.req("DELETE", &format!("/{d}/f"), &[]).await, 200)?;
    ensure!(s.stat(&format!("{d}/f")).is_none(), "not deleted");
    is_errno(
        &t.client.req("DELETE", &format!("/{d}/f"), &[]).await,
        404,
        "ENOENT",
    )?;
    s.mkdir(&format!("{d}/dir"));
    is_errno(
        &t.client.req("DELETE", &format!("/{d}/dir"), &[]).await,
        403,
        "EISDIR",
    )?;
    s.symlink(b"dir", &format!("{d}/ln"));
    is_status(&t.client.req("DELETE", &format!("/{d}/ln"), &[]).await, 200)?;
    ensure!(
        s.stat(&format!("{d}/dir")).is_some(),
        "DELETE followed a symlink"
    );
    Ok(())
}

async fn fsync(t: &Target, d: &str) -> CheckResult {
    t.store.write(&format!("{d}/f"), b"x");
    is_status(&t.client.req("FSYNC", &format!("/{d}/f"), &[]).await, 200)?;
    is_status(
        &t.client
            .req("FSYNC", &format!("/{d}/f"), &[("X-Spock-flag", "1")])
            .await,
        200,
    )?;
    is_status(&t.client.req("FSYNC", &format!("/{d}"), &[]).await, 200)?;
    is_errno(
        &t.client.req("FSYNC", &format!("/{d}/none"), &[]).await,
        404,
        "ENOENT",
    )?;
    Ok(())
}

async fn bad_paths(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.mkdir(&format!("{d}/a"));
    s.write(&format!("{d}/a/f"), b"x");
    let before = s.list(d);
    let paths = [
        format!("/{d}/a/../a/f"),
        format!("/{d}/a/./f"),
        format!("/{d}/a/.."),
        format!("/{d}/a/%2e%2e/a/f"),
        format!("/{d}/a/%2E%2e/a/f"),
        format!("/{d}/a/.%2E/a/f"),
        format!("/{d}/a%2f..%2fa/f"),
        format!("/{d}/a%2F%2E%2E%2Fa%2Ff"),
        format!("/{d}//a/f"),
        format!("/{d}/a//f"),
        format!("/{d}/a/f%00x"),
        format!("/{d}/a/%zz"),
        "/..".to_string(),
        "/%2e%2e".to_string(),
        "/%2e%2e/%2e%2e/etc/passwd".to_string(),
    ];
    for p in &paths {
        for (m, h) in [
            ("GET", None),
            ("GETATTR", None),
            ("DELETE", None),
            ("MKDIR", Some(("X-Spock-mode", "448"))),
            ("RMDIR", None),
        ] {
            let hs: Vec<(&str, &str)> = h.into_iter().collect();
            let r = t.client.req(m, p, &hs).await;
            ensure_eq!(r.status.as_u16(), 400, "{m} {p}");
            ensure!(
                r.body.starts_with(b"400 Bad Request: EINVAL: invalid path"),
                "{m} {p}: {:?}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    ensure_eq!(s.list(d), before, "tree changed");
    ensure_eq!(s.read(&format!("{d}/a/f")), Some(b"x".to_vec()));
    // NAME_MAX: 255 bytes is fine, 256 is ENAMETOOLONG.
    let long = "n".repeat(255);
    is_status(
        &t.client
            .req("POST", &format!("/{d}/{long}"), &[("X-Spock-mode", "420")])
            .await,
        201,
    )?;
    let r = t.client.req("GETATTR", &format!("/{d}/{long}n"), &[]).await;
    is_errno(&r, 400, "ENAMETOOLONG")?;
    s.write(&format!("{d}/a/f"), b"x");
    let _ = t.client.req("DELETE", &format!("/{d}/{long}"), &[]).await;
    // Names that merely look like dots are fine; %2f is a separator.
    s.write(&format!("{d}/a/...x"), b"dots");
    let r = t.client.req("GET", &format!("/{d}/a%2f...x"), &[]).await;
    is_status(&r, 200)?;
    ensure_eq!(&r.body[..], b"dots");
    Ok(())
}

async fn trailing_slash(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"x");
    s.mkdir(&format!("{d}/dir"));
    is_status(
        &t.client.req("GETATTR", &format!("/{d}/dir/"), &[]).await,
        200,
    )?;
    is_status(
        &t.client.req("READDIR", &format!("/{d}/dir/"), &[]).await,
        200,
    )?;
    is_errno(
        &t.client.req("GETATTR", &format!("/{d}/f/"), &[]).await,
        500,
        "ENOTDIR",
    )?;
    is_errno(
        &t.client.req("GET", &format!("/{d}/f/"), &[]).await,
        500,
        "ENOTDIR",
    )?;
    is_errno(
        &t.client.req("DELETE", &format!("/{d}/f/"), &[]).await,
        500,
        "ENOTDIR",
    )?;
    ensure!(s.stat(&format!("{d}/f")).is_some(), "deleted through f/");
    is_errno(
        &t.client
            .req("POST", &format!("/{d}/new/"), &[("X-Spock-mode", "420")])
            .await,
        500,
        "ENOTDIR",
    )?;
    ensure!(s.stat(&format!("{d}/new")).is_none(), "created new/");
    is_status(
        &t.client
            .req("MKDIR", &format!("/{d}/nd/"), &[("X-Spock-mode", "448")])
            .await,
        201,
    )?;
    is_status(&t.client.req("RMDIR", &format!("/{d}/nd/"), &[]).await, 200)?;
    // A symlink to a directory with a trailing slash is not a directory here.
    s.symlink(b"dir", &format!("{d}/ln"));
    is_errno(
        &t.client.req("READDIR", &format!("/{d}/ln/"), &[]).await,
        500,
        "ENOTDIR",
    )?;
    Ok(())
}

async fn missing_and_malformed_headers(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    s.write(&format!("{d}/f"), b"0123");
    let before = (s.list(d), s.stat(&format!("{d}/f")));
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("MKDIR", "n1", &[], "X-Spock-mode"),
        ("MKDIR", "n1", &[("X-Spock-mode", "abc")], "X-Spock-mode"),
        ("MKDIR", "n1", &[("X-Spock-mode", "-1")], "X-Spock-mode"),
        ("MKDIR", "n1", &[("X-Spock-mode", "0x1ff")], "X-Spock-mode"),
        ("MKDIR", "n1", &[("X-Spock-mode", "1 2")], "X-Spock-mode"),
        (
            "MKDIR",
            "n1",
            &[("X-Spock-mode", "99999999999")],
            "X-Spock-mode",
        ),
        ("POST", "n2", &[], "X-Spock-mode"),
        ("MKNOD", "n3", &[("X-Spock-dev", "0")], "X-Spock-mode"),
        ("CHMOD", "f", &[], "X-Spock-mode"),
        ("CHMOD", "f", &[("X-Spock-mode", "4.5")], "X-Spock-mode"),
        ("CHOWN", "f", &[("X-Spock-gid", "0")], "X-Spock-uid"),
        ("CHOWN", "f", &[("X-Spock-uid", "0")], "X-Spock-gid"),
        ("TRUNCATE", "f", &[], "X-Spock-size"),
        ("TRUNCATE", "f", &[("X-Spock-size", "-1")], "X-Spock-size"),
        ("ACCESS", "f", &[], "X-Spock-mode"),
        ("SYMLINK", "n4", &[], "X-Spock-target"),
        ("LINK", "n5", &[], "X-Spock-target"),
        ("RENAME", "n6", &[], "X-Spock-target"),
        ("FALLOCATE", "f", &[("X-Spock-mode", "0")], "Range"),
        ("GETXATTR", "f", &[("X-Spock-size", "1")], "X-Spock-target"),
        ("SETXATTR", "f", &[("X-Spock-flag", "0")], "X-Spock-target"),
        (
            "SETXATTR",
            "f",
            &[("X-Spock-target", "user.x"), ("X-Spock-flag", "7")],
            "X-Spock-flag",
        ),
        ("REMOVEXATTR", "f", &[], "X-Spock-target"),
        ("LISTXATTR", "f", &[("X-Spock-size", "x")], "X-Spock-size"),
        ("UTIMENS", "f", &[("X-Spock-mtime", "1")], "X-Spock-atime"),
        (
            "UTIMENS",
            "f",
            &[("X-Spock-atime", "1"), ("X-Spock-mtime", "1e9")],
            "X-Spock-mtime",
        ),
        ("OPEN", "f", &[("X-Spock-flag", "zz")], "X-Spock-flag"),
    ];
    for (m, name, hs, named) in cases {
        let r = t.client.req(m, &format!("/{d}/{name}"), hs).await;
        ensure_eq!(r.status.as_u16(), 400, "{m} {hs:?}");
        let body = String::from_utf8_lossy(&r.body);
        ensure!(
            body.contains(named),
            "{m} {hs:?}: body {body:?} does not name {named}"
        );
        ensure_eq!(r.errno(), "EINVAL", "{m}");
    }
    ensure_eq!(
        (s.list(d), s.stat(&format!("{d}/f"))),
        before,
        "bad requests changed the tree"
    );
    // Duplicate headers are malformed too.
    let r = t
        .client
        .send(
            "CHMOD",
            &format!("/{d}/f"),
            &[("X-Spock-mode", b"448"), ("X-Spock-mode", b"511")],
            "",
        )
        .await;
    is_status(&r, 400)?;
    Ok(())
}

async fn errors_are_described(t: &Target, d: &str) -> CheckResult {
    let r = t.client.req("GETATTR", &format!("/{d}/none"), &[]).await;
    is_errno(&r, 404, "ENOENT")?;
    ensure_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    ensure!(
        r.body.ends_with(b"\n") && r.body.iter().filter(|&&b| b == b'\n').count() == 1,
        "not one line: {:?}",
        r.body
    );
    ensure_eq!(r.header("content-length"), r.body.len().to_string());
    Ok(())
}

/// Minimal HTTP/1.1 exchange on one raw connection to the target (TLS and
/// `Authorization` added when the target has them): sends each request,
/// reads each response (by Content-Length), returns status, body and head.
pub async fn raw_exchange(
    t: &Target,
    requests: &[Vec<u8>],
) -> Result<Vec<(u16, Vec<u8>, String)>, String> {
    let tcp = tokio::net::TcpStream::connect(t.addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut sock: Box<dyn RawIo> = match &t.tls {
        None => Box::new(tcp),
        Some((cfg, name)) => {
            let name =
                rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| e.to_string())?;
            Box::new(
                tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for req in requests {
        let mut req = req.clone();
        if let (Some(a), Some(eol)) = (&t.auth, req.windows(2).position(|w| w == b"\r\n")) {
            let line = format!("\r\nAuthorization: {a}");
            req.splice(eol..eol, line.into_bytes());
        }
        sock.write_all(&req).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let r = crate::raw::read_response(&mut sock, &mut buf, deadline).await?;
        out.push((r.status, r.body, r.head));
    }
    Ok(out)
}

/// A raw connection: TCP or TLS.
pub trait RawIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawIo for T {}

async fn keep_alive_after_errors(t: &Target, d: &str) -> CheckResult {
    t.store.write(&format!("{d}/f"), b"abc");
    let p = &t.prefix;
    let reqs = vec![
        format!("GETATTR {p}/{d}/none HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        format!("MKDIR {p}/{d}/z HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        format!("PUT {p}/{d}/none HTTP/1.1\r\nHost: x\r\nContent-Range: bytes=0-4\r\nContent-Length: 5\r\n\r\nhello").into_bytes(),
        format!("PUT {p}/{d}/f HTTP/1.1\r\nHost: x\r\nContent-Range: bytes=0-9\r\nContent-Length: 5\r\n\r\nhello").into_bytes(),
        format!("FOO {p}/{d} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        format!("GET {p}/{d}/f HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
    ];
    let resps = raw_exchange(t, &reqs).await?;
    let statuses: Vec<u16> = resps.iter().map(|r| r.0).collect();
    ensure_eq!(statuses, vec![404, 400, 404, 400, 405, 200]);
    ensure_eq!(resps[5].1, b"abc".to_vec());
    Ok(())
}

async fn http11_without_host(t: &Target, d: &str) -> CheckResult {
    let p = &t.prefix;
    let resps = raw_exchange(
        t,
        &[format!("GETATTR {p}/{d} HTTP/1.1\r\n\r\n").into_bytes()],
    )
    .await?;
    ensure_eq!(resps[0].0, 400);
    // HTTP/1.0 without Host is fine (default root).
    let resps = raw_exchange(
        t,
        &[format!("GETATTR {p}/{d} HTTP/1.0\r\n\r\n").into_bytes()],
    )
    .await?;
    ensure_eq!(resps[0].0, 200);
    Ok(())
}

async fn non_utf8_names(t: &Target, d: &str) -> CheckResult {
    let s = &t.store;
    // Names are bytes: percent-encoded non-UTF-8 works end to end.
    let r = t
        .client
        .req(
            "POST",
            &format!("/{d}/caf%E9%20%FF"),
            &[("X-Spock-mode", "420")],
        )
        .await;
    is_status(&r, 201)?;
    let names = s.list(d).unwrap_or_default();
    ensure_eq!(names, vec![b"caf\xe9 \xff".to_vec()]);
    let r = t.client.req("READDIR", &format!("/{d}"), &[]).await;
    ensure_eq!(&r.body[..], b".\n..\ncaf\xe9 \xff\n");
    let r = t.client.req("RENAME", &format!("/{d}/ok"), &[]).await;
    is_status(&r, 400)?;
    let r = t
        .client
        .send(
            "RENAME",
            &format!("/{d}/ok"),
            &[("X-Spock-target", format!("/{d}/caf\u{e9} ").as_bytes())],
            "",
        )
        .await;
    is_errno(&r, 404, "ENOENT")?;
    let mut target = format!("/{d}/").into_bytes();
    target.extend_from_slice(b"caf\xe9 \xff");
    let r = t
        .client
        .send(
            "RENAME",
            &format!("/{d}/ok"),
            &[("X-Spock-target", &target)],
            "",
        )
        .await;
    is_status(&r, 200)?;
    ensure_eq!(s.list(d), Some(vec![b"ok".to_vec()]));
    Ok(())
}
