#!/usr/bin/env bash
# The project's test command: everything, end to end over real HTTP.
#
#   ./scripts/test.sh            # all tests (release build)
#   ./scripts/test.sh -p spockfs-tests --test confinement   # a subset
#
# Installs the system packages the tests need when they are missing (as
# root, on Debian); tests that need them fail rather than skip under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)   # pingora builds a C library
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_pkgs+=(nginx-light)   # tests/tests/nginx.rs
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)   # tests/tests/{mount,perms}.rs: FUSE mounts
command -v sqlite3 >/dev/null 2>&1 || need_pkgs+=(sqlite3)     # tests/tests/mount.rs: sqlite in the mount
command -v git >/dev/null 2>&1 || need_pkgs+=(git)             # tests/tests/mount.rs: git in the mount
command -v glusterd >/dev/null 2>&1 || [[ -x /usr/sbin/glusterd ]] || need_pkgs+=(glusterfs-server)   # tests/tests/fleet.rs: the fleet on GlusterFS
if ((${#need_pkgs[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing: ${need_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
    else
        echo "missing system packages: ${need_pkgs[*]} (run as root on Debian to install them)" >&2
        exit 1
    fi
fi

# tests/tests/mount.rs runs the spockfs-mount and axum-app binaries, and
# tests/tests/{nginx,faults,soak}.rs the server binaries, from the test
# executables' target dir.
cargo build --release --locked -p spockfs-mount -p axum-app -p pingora-gateway --bins

if (($#)); then
    exec cargo test --release --locked "$@"
fi
cargo test --release --locked --workspace
# The crates as an adopter gets them: a project outside the workspace (no
# [patch], its own lock) that depends on each by path, builds and runs the
# README's examples.
cargo run --release --manifest-path tests/outside/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}"
# Every library crate packages as crates.io would take it (manifest
# metadata, included files); tests/outside above built them as dependents.
cargo package --locked --no-verify --allow-dirty -q -p spockfs-proto -p spockfs-core \
    -p spockfs-tower -p spockfs-pingora -p spockfs-conn -p spockfs-client -p spockfs-mount -p spockfs-fuser
# The library crates build with the Rust version they declare.
scripts/msrv.sh
# API docs build without a warning (broken intra-doc links included).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --workspace --exclude spockfs-tests --exclude spockfs-props
