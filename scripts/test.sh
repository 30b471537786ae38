#!/usr/bin/env bash
# The full test suite: Rust tests, then the real-client conformance suite (pusher-js + pusher SDK).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sockudo-target}"
# Real-client checks need the pinned npm packages (pusher-js, the pusher SDK): the Rust
# webhook tests validate signatures with the SDK too, so install them first.
if [ ! -d conformance/node_modules ]; then
  (cd conformance && npm ci --no-audit --no-fund)
fi
cargo test --workspace --all-targets
if [ -f conformance/run.sh ]; then
  bash conformance/run.sh
fi
