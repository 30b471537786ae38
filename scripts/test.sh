#!/usr/bin/env bash
# The full test suite: Rust tests, then the real-client conformance suite (pusher-js + pusher SDK).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sockudo-target}"
cargo test --workspace --all-targets
if [ -f conformance/run.sh ]; then
  bash conformance/run.sh
fi
