#!/usr/bin/env bash
# Checks that the library crates build with the rust-version they declare
# (workspace Cargo.toml), with dependencies resolved the way an adopter's
# MSRV-aware cargo resolves them: in a copy of the tree with its own
# lockfile (incompatible-rust-versions = fallback), so Cargo.lock is untouched.
# Installs the toolchain with rustup when it is missing. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[[ -n $msrv ]] || { echo "msrv.sh: no rust-version in Cargo.toml" >&2; exit 1; }
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
    echo "msrv.sh: installing Rust $msrv"
    rustup toolchain install "$msrv" --profile minimal
fi
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -P -t "$copy"
cd "$copy"
CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo "+$msrv" update -q
target=${CARGO_TARGET_DIR:-$OLDPWD/target}/msrv
cargo "+$msrv" check -q --target-dir "$target" \
    -p spockfs-proto -p spockfs-core -p spockfs-tower -p spockfs-pingora \
    -p spockfs-conn -p spockfs-client -p spockfs-mount -p spockfs-fuser
echo "msrv.sh: the library crates build with Rust $msrv"
