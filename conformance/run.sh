#!/usr/bin/env bash
# Conformance suite: the real pusher-js 8.6.0 client and the real `pusher` 5.3.4 server SDK
# against a real Sockudo node.
#
#   conformance/run.sh                      # build, start a node on a free port, run every test
#   conformance/run.sh tests/04-presence.test.js   # only some test files
#
# Environment:
#   CARGO_TARGET_DIR   cargo target dir (default: $HOME/.cache/sockudo-target)
#   SKIP_BUILD=1       do not run cargo build (use the existing binary)
#   SOCKUDO_LOG        file for the node's stdout/stderr (default: a temp file, printed on failure)
#   PUSHER_DEBUG=1     pusher-js logs to the console
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sockudo-target}"

# (1) build the node
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  (cd "$root" && cargo build -p sockudo-server --bin sockudo)
fi
bin="$CARGO_TARGET_DIR/debug/sockudo"
if [[ ! -x "$bin" ]]; then
  echo "run.sh: $bin not found" >&2
  exit 2
fi

# (2) client dependencies
cd "$here"
if [[ ! -d node_modules ]]; then
  npm ci --no-audit --no-fund
fi

# (3) config + node
workdir="$(mktemp -d "${TMPDIR:-/tmp}/sockudo-conformance.XXXXXX")"
log="${SOCKUDO_LOG:-$workdir/sockudo.log}"
node_pid=""

cleanup() {
  local rc=$?
  if [[ -n "$node_pid" ]] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$node_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f "$log" ]]; then
    echo "---- last 40 lines of the sockudo log ($log) ----" >&2
    tail -n 40 "$log" >&2 || true
  fi
  if [[ -z "${SOCKUDO_LOG:-}" ]]; then
    rm -rf "$workdir"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port="$(node -e '
  const s = require("net").createServer();
  s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => console.log(p)); });
')"

config="$workdir/sockudo.toml"
# Keep in sync with APPS in tests/helpers.js.
cat >"$config" <<EOF
host = "127.0.0.1"
port = $port
activity_timeout = 120
cache_channel_ttl = 1800

# main app: client messages on
[[apps]]
id = "1001"
key = "conf-key"
secret = "conf-secret"
enabled = true
enable_client_messages = true
max_connections = 0
max_client_events_per_second = 10
max_presence_members = 100
max_presence_user_info_bytes = 1024
max_event_payload_bytes = 10240

# client messages disabled
[[apps]]
id = "1002"
key = "conf-noclient-key"
secret = "conf-noclient-secret"
enabled = true
enable_client_messages = false
max_connections = 0
max_client_events_per_second = 10
max_presence_members = 100
max_presence_user_info_bytes = 1024
max_event_payload_bytes = 10240

# disabled app
[[apps]]
id = "1003"
key = "conf-disabled-key"
secret = "conf-disabled-secret"
enabled = false
enable_client_messages = true
max_connections = 0
max_client_events_per_second = 10
max_presence_members = 100
max_presence_user_info_bytes = 1024
max_event_payload_bytes = 10240

# one connection at most
[[apps]]
id = "1004"
key = "conf-single-key"
secret = "conf-single-secret"
enabled = true
enable_client_messages = true
max_connections = 1
max_client_events_per_second = 10
max_presence_members = 100
max_presence_user_info_bytes = 1024
max_event_payload_bytes = 10240

# two presence members at most
[[apps]]
id = "1005"
key = "conf-presence-key"
secret = "conf-presence-secret"
enabled = true
enable_client_messages = true
max_connections = 0
max_client_events_per_second = 10
max_presence_members = 2
max_presence_user_info_bytes = 1024
max_event_payload_bytes = 10240
EOF

echo "run.sh: starting $bin --config $config --port $port (log: $log)"
# A clean environment: the node is configured by $config alone, whatever the caller's shell
# exports (ADAPTER_DRIVER, DATABASE_URL, ...).
env -i PATH="$PATH" HOME="$HOME" TMPDIR="${TMPDIR:-/tmp}" RUST_LOG="${RUST_LOG:-}" \
  RUST_BACKTRACE="${RUST_BACKTRACE:-}" "$bin" --config "$config" --port "$port" >"$log" 2>&1 &
node_pid=$!

deadline=$((SECONDS + 60))
until node -e '
  const req = require("http").get({ host: "127.0.0.1", port: Number(process.argv[1]), path: "/health", timeout: 1000 },
    (res) => { res.resume(); process.exit(res.statusCode === 200 ? 0 : 1); });
  req.on("error", () => process.exit(1));
  req.on("timeout", () => { req.destroy(); process.exit(1); });
' "$port"; do
  if ! kill -0 "$node_pid" 2>/dev/null; then
    echo "run.sh: sockudo exited before becoming healthy" >&2
    exit 3
  fi
  if ((SECONDS >= deadline)); then
    echo "run.sh: sockudo did not answer 200 on /health within 60 s" >&2
    exit 4
  fi
  sleep 0.25
done
echo "run.sh: node healthy on port $port"

# (4) the tests
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(tests/)
fi
set +e
SOCKUDO_PORT="$port" node --test --test-concurrency=1 "${targets[@]}"
rc=$?
set -e
# (5) the trap stops the node; exit with the test runner's code
exit $rc
