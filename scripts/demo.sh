#!/usr/bin/env bash
# The main job: a lab on this machine (network namespaces only) with containers talking
# over weft. Run as root on Debian 12: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --quiet -p weft
# Built for the host tuple, named (.cargo/config.toml): target/<tuple>/release.
exec "./target/$(rustc --print host-tuple)/release/weft" lab demo "$@"
