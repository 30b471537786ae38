#!/usr/bin/env bash
# Run one cargo-fuzz target for a bounded time (not part of CI):
#   scripts/fuzz.sh TARGET [SECONDS]     targets: frame_parse api_signature ws_upgrade v2_frames
# The toolchain here is stable only; RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its sanitizer
# flags to it. Findings land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?target name}"
secs="${2:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sockudo-target}/fuzz"
cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096
