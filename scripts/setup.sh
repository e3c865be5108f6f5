#!/usr/bin/env bash
# Installs what weft's demo, tests and benchmarks need on Debian 12 (run as root), then
# builds weft. Idempotent: packages already there are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs packages and the lab creates network namespaces)" >&2
  exit 1
fi

pkgs=(iproute2 nftables iptables iputils-ping traceroute busybox-static util-linux procps tar
      podman runc conmon containernetworking-plugins iperf3 jq curl ca-certificates
      # The BPF fast path (crates/fastpath) is compiled with clang against the kernel's UAPI headers.
      clang linux-libc-dev
      # glibc is linked into weft statically (.cargo/config.toml): libc.a.
      libc6-dev
      # Operations tests: Prometheus scrapes the lab's agents; systemd-analyze checks the unit
      # that `weft install` writes.
      prometheus systemd
      # The name service's tests and benchmark: dig and nslookup, dnsmasq as an upstream
      # server and as the benchmark's anchor (the binary only, no service), dnsperf.
      bind9-dnsutils dnsmasq-base dnsperf
      # The Docker tests and benchmark: dockerd (with its containerd and runc) run only inside
      # lab namespaces, each started by `weft lab docker`.
      docker.io
      # The encrypted tunnel's tests capture the underlay.
      tcpdump)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  # Packaged services must not start while installing: docker.service would make docker0 and
  # iptables rules in the root network namespace, which weft's lab never touches.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [[ " ${missing[*]} " == *" docker.io "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now docker.service docker.socket containerd.service >/dev/null 2>&1 || true
  fi
  # The tests run their own Prometheus in a lab namespace: the packaged service, which the
  # package starts on a host run by systemd, is not wanted.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

# The Rust toolchain: rustup's if present.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
# Debian 12's own rustc (1.63) is older than weft needs (1.91: `build.target = "host-tuple"` in
# .cargo/config.toml; 1.89 for the YAML reader of `weft apply`): without a new enough cargo,
# rustup installs the stable toolchain for root.
cargo_ok() {
  command -v cargo >/dev/null 2>&1 || return 1
  local v
  v=$(cargo --version | awk '{print $2}')
  [ "$(printf '%s\n1.91.0\n' "$v" | sort -V | head -n1)" = "1.91.0" ]
}
if ! cargo_ok; then
  echo "setup: no Rust 1.91 or newer found; installing the stable toolchain with rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy >/dev/null
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
