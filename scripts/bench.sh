#!/usr/bin/env bash
# weft's benchmarks: weft beside its anchors on the same lab in one run, reported as ratios.
# Separate from the tests (nothing here asserts a timing). Run as root on Debian 12:
#   bash scripts/bench.sh            # prints the report and rewrites docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --quiet -p weft -p weft-bench

containers=${CONTAINERS:-200}
cni=$(./target/release/weft-bench cni --containers "$containers" --weft target/release/weft)
mesh=$(./target/release/weft-bench mesh-bytes --nodes 20,200,1000)
join=$(./target/release/weft-bench mesh-join --hosts 20 --rounds 5 --weft target/release/weft)
dataplane=$(./target/release/weft-bench dataplane --weft target/release/weft --rounds 7)

{
  echo "# Benchmarks"
  echo
  echo "Every figure here comes from one run of \`bash scripts/bench.sh\`, which measures weft and"
  echo "its anchor side by side on the same lab, in the same run. On these small shared machines"
  echo "absolute numbers mean little; the ratios are the result."
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); $(date -u +%Y-%m-%d)."
  echo
  echo "## CNI ADD and DEL latency"
  echo
  echo "Command: \`CONTAINERS=$containers bash scripts/bench.sh\` (runs \`weft-bench cni --containers $containers\`)."
  echo "Anchor: Debian's reference \`bridge\` + \`host-local\` plugins (containernetworking-plugins), no"
  echo "masquerade, on the same lab host; the two plugins alternate container by container."
  echo "Target: weft / reference ≤ 1.0."
  echo
  echo "$cni"
  echo
  echo "DEL is dominated by the kernel's own veth teardown (RTM_DELLINK waits for RCU grace"
  echo "periods), which both plugins pay. The lab host runs weft's agent, whose fast path has its"
  echo "BPF programs on every weft veth. Attached by TCX links, deleting such a veth waited one more"
  echo "RCU grace period per direction (\`tcx_uninstall\`; RTM_DELLINK took 45-56 ms instead of 15-22 ms"
  echo "under strace, DEL at 1.72 of the reference at p50): container veths now carry classic tc"
  echo "filters on a \`clsact\` qdisc, which the kernel frees asynchronously."
  echo
  echo "## Mesh control traffic per state change"
  echo
  echo "Command: \`weft-bench mesh-bytes --nodes 20,200,1000\` (part of \`bash scripts/bench.sh\`), in"
  echo "the deterministic simulator of \`crates/mesh\`. Target: grows with N, not N² — the per-node"
  echo "cost must stay flat (a full-state broadcast would grow linearly per node)."
  echo
  echo "$mesh"
  echo
  echo "## Mesh convergence and agent memory on a lab"
  echo
  echo "Command: \`weft-bench mesh-join --hosts 20 --rounds 5\` (part of \`bash scripts/bench.sh\`): a"
  echo "20-host lab, each agent started with one peer; the last host's agent is stopped until all"
  echo "others see it gone, then started, and the time until every agent reports it up is taken."
  echo "Polling granularity 20 ms. Routes are recomputed on the 1 s tick, which bounds the join time."
  echo
  echo "$join"
  echo
  echo "## Pod-to-pod data plane"
  echo
  echo "Command: \`weft-bench dataplane --weft target/release/weft --rounds 7\` (part of \`bash scripts/bench.sh\`):"
  echo "two lab hosts on one L2 underlay (2-host \`mesh\` labs), client on h1's side, server on h2's;"
  echo "iperf3 TCP throughput (receiver's count), \`ping -i 0.01\` average round trip, and TCP"
  echo "request/response (weft-bench's own 1-byte ping-pong on one connection, TCP_NODELAY). All paths"
  echo "are measured interleaved, round by round, on labs that are up together; the table gives each"
  echo "path's median, a throughput ratio is the median of the rounds' ratios (weft and its anchor"
  echo "measured in the same round share that round's drift)."
  echo "Anchors: host to host (the hosts' own namespaces over the underlay); hand routes, on a lab"
  echo "without agents: a pod namespace per host with a veth, a /32 address and a default route"
  echo "through 169.254.1.1 (permanent neighbours), and on each host a plain route to the other pod"
  echo "via the other host's underlay address; hand VXLAN: the same kind of pods at MTU 1450, the"
  echo "host-to-host hop through a hand-made VXLAN device (id 99, \`nolearning\`, a static flood entry"
  echo "towards the other host). weft: a lab whose agents run with \`--mode route\` (resp."
  echo "\`--mode vxlan\`) and the defaults \`--nat on\` (the anchors have no NAT) and \`--fast-path on\`,"
  echo "one container per host attached by weft's CNI plugin; the \"NAT off\" rows are the same with"
  echo "\`--nat off\`, the \"no fast path\" rows with \`--fast-path off\` (the kernel's stack forwards)."
  echo "Targets: weft route / hand routes throughput ≥ 0.95 and latency at most 15 µs above it; the"
  echo "same for weft VXLAN / hand VXLAN."
  echo
  echo "$dataplane"
  echo
  echo "A ping's round trip in these VMs swings by ±30 µs from round to round (idle wake-ups),"
  echo "hence seven rounds; the pinned request/response figure is the steady one. A NAT table turns"
  echo "on connection-tracking hooks for the whole host; weft exempts pod-to-pod and VXLAN packets"
  echo "from tracking, and its fast path (a tc BPF program on its own devices) forwards pod-to-pod"
  echo "packets past the host's stack and those hooks. In route mode the receiving host's underlay"
  echo "interface is not weft's, so there packets still take the stack (docs/dataplane.md, \"Fast path\")."
} > docs/benchmarks.md
cat docs/benchmarks.md
