#!/usr/bin/env bash
# Every test of weft: unit and property tests of the pure crates, and the lab tests
# (network namespaces, the real kernel, podman and the reference CNI plugins).
# Run as root on Debian 12: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Lab tests run a few at a time: each makes its own lab, with its own name.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace -- --test-threads=4 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo's last line is that of the last doc-test set).
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
