#!/usr/bin/env bash
# Build a CI image with runner and the plugins a pipeline's runner.lock pins.
#
#   examples/ci-image/build.sh LOCKFILE IMAGE [LABEL]
#
# Needs the registry the lock names (once, here), the musl target
# (rustup target add x86_64-unknown-linux-musl) and musl-gcc (Debian:
# musl-tools). Runs nothing from the network at CI time.
set -euo pipefail
lock=$1 image=$2 label=${3:-runner-ci-image=1}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}

cargo build --quiet --release --target x86_64-unknown-linux-musl --bin runner --manifest-path "$repo/Cargo.toml"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$target/x86_64-unknown-linux-musl/release/runner" "$context/runner"
cp "$here/Dockerfile" "$context/"
# The bundle is precompiled by the binary that goes into the image, with a
# throwaway cache (the image must not depend on this machine's).
RUNNER_CACHE_DIR="$context/.cache" "$context/runner" plugin bundle --lock "$lock" --out "$context/bundle"
rm -rf "$context/.cache" "$context/.cache.key"
chmod -R go-w "$context/bundle"
docker build --quiet --label "$label" -t "$image" "$context"
