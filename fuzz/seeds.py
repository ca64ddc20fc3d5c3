#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every target into fuzz/corpus/<target>/
(seed-*.bin). The encodings follow tests/props/src/input.rs (Cursor) and the
decoders of each property; run `cargo fuzz cmin` afterwards to keep the
corpus minimal."""
import os, struct, hashlib

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["READDIR", "GETATTR", "MKNOD", "OPEN", "CHMOD", "CHOWN", "TRUNCATE", "ACCESS",
           "SYMLINK", "READLINK", "RMDIR", "MKDIR", "LINK", "RENAME", "FALLOCATE", "STATFS",
           "LISTXATTR", "GETXATTR", "SETXATTR", "REMOVEXATTR", "UTIMENS", "GET", "HEAD", "PUT",
           "POST", "DELETE", "OPTIONS", "FSYNC"]
NUMBERS = ["0", "1", "2", "-1", "420", "493", "511", "4480", "33188", "16877", "4294967295",
           "4294967296", "-2147483648", "9223372036854775807", "9223372036854775808",
           "18446744073709551615", "18446744073709551616", "-9223372036854775808",
           "-9223372036854775809", "007", "+1", " 1", "1 ", "0x10", "", "-", "1e3"]
PATHS = ["/", "/dir", "/dir/", "/dir/file", "/dir/sub", "/dir/sub/", "/dir/new", "/new", "/new/",
         "/new/x", "/abs", "/abs/", "/abs/secret", "/abs/newthing", "/rel", "/rel/secret",
         "/rel/odir/deep", "/fabs", "/frel", "/loop", "/loop/x", "/dangling", "/dangling/x",
         "/inner", "/inner/file", "/dir/file/x", "/%2e%2e/outside/secret",
         "/dir/..%2f..%2foutside", "/caf%C3%A9", "/a%0Ab", "/%ff", "//x", "/dir/../dir"]
ENGINE_HEADERS = ["x-spock-mode", "x-spock-uid", "x-spock-gid", "x-spock-size", "x-spock-mtime",
                  "x-spock-atime", "x-spock-target", "x-spock-flag", "x-spock-dev",
                  "x-spock-readdir", "range", "content-range"]


def lp(b):
    if isinstance(b, str):
        b = b.encode()
    assert len(b) < 256
    return bytes([len(b)]) + b


def write(target, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16] + ".bin"
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def value(v):
    """An engine/headers header value: from NUMBERS if listed, else raw."""
    if v in NUMBERS:
        return bytes([0, NUMBERS.index(v)])
    return bytes([3]) + lp(v)


def request(method, path, headers=(), body=b""):
    out = bytes([METHODS.index(method)]) if method in METHODS else (
        bytes([28]) if method == "HEAD" else bytes([29]) if method == "OPTIONS"
        else bytes([0xf0]) + lp(method))
    if path in PATHS:
        out += bytes([PATHS.index(path)])
    else:
        out += bytes([0xf0]) + lp(path)
    out += bytes([len(headers)])
    for k, v in headers:
        out += bytes([ENGINE_HEADERS.index(k)]) + value(v)
    return out + lp(body)


def engine_seeds():
    seqs = [
        [("READDIR", "/", [], b""), ("READDIR", "/dir", [("x-spock-readdir", "attrs")], b"")],
        [("GETATTR", "/dir/file", [], b""), ("GETATTR", "/abs", [], b""), ("GETATTR", "/abs/secret", [], b"")],
        [("MKDIR", "/new", [("x-spock-mode", "493")], b""), ("POST", "/new/x", [("x-spock-mode", "420")], b""),
         ("PUT", "/new/x", [("content-range", "bytes=0-4")], b"hello"), ("GET", "/new/x", [("range", "bytes=1-2")], b""),
         ("HEAD", "/new/x", [], b""), ("GET", "/new/x", [("range", "bytes=9-")], b"")],
        [("PUT", "/dir/new", [], b"whole file"), ("RENAME", "/new", [("x-spock-target", "/dir/new")], b""),
         ("LINK", "/dir/h", [("x-spock-target", "/new")], b""), ("DELETE", "/new", [], b"")],
        [("SYMLINK", "/dir/l", [("x-spock-target", "../../outside")], b""), ("READLINK", "/dir/l", [], b""),
         ("GET", "/dir/l/secret", [], b""), ("CHMOD", "/dir/l", [("x-spock-mode", "511")], b"")],
        [("SETXATTR", "/dir/file", [("x-spock-target", "user.k"), ("x-spock-flag", "0")], b"v"),
         ("LISTXATTR", "/dir/file", [("x-spock-size", "0")], b""),
         ("GETXATTR", "/dir/file", [("x-spock-target", "user.k"), ("x-spock-size", "100")], b""),
         ("REMOVEXATTR", "/dir/file", [("x-spock-target", "user.k")], b"")],
        [("TRUNCATE", "/dir/file", [("x-spock-size", "2")], b""),
         ("FALLOCATE", "/dir/file", [("x-spock-mode", "0"), ("range", "bytes=0-99")], b""),
         ("UTIMENS", "/dir/file", [("x-spock-atime", "1"), ("x-spock-mtime", "2")], b""),
         ("CHOWN", "/dir/file", [("x-spock-uid", "-1"), ("x-spock-gid", "4294967295")], b""),
         ("ACCESS", "/dir/file", [("x-spock-mode", "7")], b""), ("OPEN", "/dir/file", [("x-spock-flag", "2")], b""),
         ("FSYNC", "/dir/file", [("x-spock-flag", "1")], b""), ("STATFS", "/", [], b"")],
        [("MKNOD", "/dir/fifo", [("x-spock-mode", "4480"), ("x-spock-dev", "0")], b""),
         ("GET", "/dir/fifo", [], b""), ("OPEN", "/dir/fifo", [("x-spock-flag", "0")], b""), ("RMDIR", "/dir/sub", [], b"")],
        [("RENAME", "/dir/stolen", [("x-spock-target", "/abs/secret")], b""),
         ("LINK", "/dir/stolen", [("x-spock-target", "/rel/secret")], b""),
         ("PUT", "/abs/secret", [], b"PWNED"), ("DELETE", "/rel/secret", [], b""), ("MKDIR", "/abs/newthing", [("x-spock-mode", "493")], b"")],
        [("OPTIONS", "/", [], b""), ("BREW", "/", [], b""), ("GET", "/%2e%2e/outside/secret", [], b""),
         ("GET", "/dir/", [], b""), ("DELETE", "/dir/file/x", [], b"")],
        [("PUT", "/dir/file", [("content-range", "bytes=0-18446744073709551615")], b""),
         ("PUT", "/dir/file", [("content-range", "bytes 0-4/*")], b"abc"),
         ("GET", "/dir/file", [("range", "bytes=-3")], b"")],
    ]
    for s in seqs:
        data = b"".join(request(*r) for r in s)
        write("engine_mem", data)
        write("engine_local", data)


def main():
    for p in ["/", "/a/b", "/a/b/", "/%2e%2e/x", "/a%2fb", "/caf%C3%A9%20menu", "//", "/a%00b", "/.",
              "/a/../b", "/%zz", "/" + "a" * 256, "/" + "a" * 255, "/a%", "a", "/%ff%fe", "/.hidden",
              "/...", "/x y", "/fs/a", "/a/%2E%2e/", "/a\nb"]:
        write("path", p.encode())
    write("path", b"/\xff\xfe/\x00")
    # headers: count-1, values (even selector: NUMBERS index; odd: raw), then a request head.
    for vals, m, path, hs in [
        (["493"], "MKDIR", "/d", [("x-spock-mode", b"\x00\x05")]),
        (["-1", "1"], "CHOWN", "/f", [("x-spock-uid", b"\x00\x03"), ("x-spock-gid", b"\x00\x0a")]),
        (["18446744073709551616"], "TRUNCATE", "/f", [("x-spock-size", b"\x00\x0f")]),
        (["007"], "RENAME", "/b", [("x-spock-target", b"\x01\x01")]),
        (["+1"], "FALLOCATE", "/f", [("range", b"\x01\x04")]),
        (["0"], "SETXATTR", "/f", [("x-spock-target", b"\x02" + lp("user.x")), ("x-spock-flag", b"\x00\x02")]),
        (["1 "], "READDIR", "/", [("x-spock-readdir", b"\x01\x00")]),
        (["9223372036854775808"], "PUT", "/f", [("content-range", b"\x01\x06")]),
    ]:
        HN = ["x-spock-mode", "x-spock-uid", "x-spock-gid", "x-spock-size", "x-spock-mtime", "x-spock-atime",
              "x-spock-target", "x-spock-flag", "x-spock-dev", "x-spock-readdir", "range", "content-range"]
        data = bytes([len(vals) - 1])
        for v in vals:
            data += bytes([0, NUMBERS.index(v)])
        data += bytes([METHODS.index(m)]) + lp(path) + bytes([len(hs)])
        for k, v in hs:
            data += bytes([HN.index(k)]) + v
        write("headers", data)
    write("headers", bytes([0, 1]) + lp("  42"))
    for size, r in [(10, "bytes=0-4"), (10, "bytes=-5"), (10, "bytes=5-"), (10, "bytes 0-9/10"),
                    (10, "bytes=5-4"), (0, "bytes=0-18446744073709551615"), (7, "BYTES = 1-2, 3-4"),
                    (10, "bytes */10"), (3, "bytes=100-200"), (2**64 - 1, "bytes=-18446744073709551615"),
                    (5, "bytes 3-2/*")]:
        write("range", struct.pack("<Q", size) + r.encode())

    def stat(fields, small=True):
        return b"".join(bytes([0 if small else 1]) + struct.pack("<Q", f & (2**64 - 1)) for f in fields)
    write("listing", stat([33188, 7, 1, 0, 0, 5, 8, 1, 2, 3]) + lp("a name") + b"16877 2 3 0 0 4096 8 1 2 3 dir")
    write("listing", stat([41471, 2**63 + 5, 1, 0, 0, 6, 0, -1, 0, 2**40], small=False) + lp("link") + b"1 2 3")
    write("listing", stat([0] * 10) + lp(".") + b"-1 -2 -3 -4 -5 -6 -7 -8 -9 -10 x y")
    write("listing", stat([1] * 10) + lp("caf\xc3\xa9") + b"4294967296 0 0 0 0 0 0 0 0 0 n")
    for attrs, body in [(1, b".\n..\na\nb c\n"), (0, b"33188 7 1 0 0 5 8 1 2 3 a\n16877 2 2 0 0 4096 8 1 2 3 d\n"),
                        (0, b"1 2 3\n"), (1, b"user.a\nuser.b\n\n"), (0, b"")]:
        hs = bytes([4, 0, 0x04, 1, 0, 6, 0x02, 0, 7, 0x02, 1, 1, 3, 3]) + lp("x")
        write("client", bytes([attrs]) + lp(body) + hs + bytes([4]) + stat([33188, 9, 1, 1000, 1000, 5, 8, 1, 2, 3]))
    engine_seeds()


main()
