#!/usr/bin/env bash
# The full test suite: Rust tests, then the real-client conformance suite (pusher-js + pusher SDK).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sockudo-target}"
# Incremental data of every clone would pile up in the shared target dir (tens of GB).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Real-client checks need the pinned npm packages (pusher-js, the pusher SDK): the Rust
# webhook tests validate signatures with the SDK too, so install them first.
if [ ! -d conformance/node_modules ]; then
  (cd conformance && npm ci --no-audit --no-fund)
fi
# The real sockudo-python client (sockudo-testkit/tests/python_resume.rs) runs from a
# virtualenv outside the clone; pip keeps its downloads in ~/.cache/pip.
pyenv="${SOCKUDO_PYENV:-$HOME/.cache/sockudo-pyenv}"
if ! "$pyenv/bin/python" -c 'import sockudo_python' >/dev/null 2>&1 \
   || ! cmp -s conformance/python/requirements.txt "$pyenv/.requirements.txt"; then
  python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install --quiet --disable-pip-version-check -r conformance/python/requirements.txt
  cp conformance/python/requirements.txt "$pyenv/.requirements.txt"
fi
export SOCKUDO_PYTHON="$pyenv/bin/python"
# The Tansu broker (Kafka API) of the kafka adapter's tests; .ci/run puts it there.
export SOCKUDO_TANSU="${SOCKUDO_TANSU:-$HOME/.cache/sockudo-brokers/tansu}"

# sockudo-testkit/tests/operator_kit.rs (the rules, dashboard and manifests of deploy/) needs
# promtool and prometheus (Debian's `prometheus`; .ci/run installs it): missing is a failure.
cargo test --workspace --all-targets
# Rustdoc: broken intra-doc links and other doc warnings fail the run.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
# The testkit's containers mode is a feature (off by default): its tests run here.
cargo test -p sockudo-testkit --features containers --test containers
# The Iggy adapter (feature `iggy`, off everywhere by default; no Iggy server can be had here):
# its mapping and state machine are unit tests of sockudo-core.
cargo test -p sockudo-core --features iggy --lib adapter::iggy_transport
if [ -f conformance/run.sh ]; then
  bash conformance/run.sh
fi
