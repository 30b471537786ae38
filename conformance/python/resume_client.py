#!/usr/bin/env python3
"""Real-client harness: the published `sockudo-python` 2.2.0 SDK, driven as a child process.

Connects with protocol V2, subscribes, and prints one JSON object per line on stdout (flushed
after every line). Reconnect and resume are entirely the SDK's own (`connection_recovery=True`);
this script only observes. See README.md in this folder for the line format (each line has `type` and `t`) and caveats.

    resume_client.py --url ws://127.0.0.1:6001/app/conf-key?protocol=2 \
        --channel room-1 --channel private-room-2 --secret conf-secret --count 20 --deadline 30

Exit codes: 0 done (count reached, --deadline without --count, stdin EOF, SIGTERM/SIGINT);
2 initial connect failed; 3 --deadline passed before --count events; 64 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from sockudo_python import (
    ChannelAuthorizationData,
    ChannelAuthorizationOptions,
    SockudoClient,
    SockudoOptions,
    SockudoTransport,
)

SYSTEM_PREFIXES = ("sockudo:", "sockudo_internal:", "pusher:", "pusher_internal:")
_stdout_lock = threading.Lock()


def emit(obj: Dict[str, Any]) -> None:
    obj.setdefault("t", round(time.time(), 3))
    line = json.dumps(obj, separators=(",", ":"), default=str)
    with _stdout_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass


class Target:
    """One server address: scheme, host, port, path prefix (before /app/KEY)."""

    def __init__(self, raw: str) -> None:
        if "://" not in raw:
            raw = "ws://" + raw
        parts = urllib.parse.urlsplit(raw)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"unsupported scheme in {raw!r} (use ws:// or wss://)")
        self.tls = parts.scheme == "wss"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        path = parts.path or ""
        self.key: Optional[str] = None
        self.path_prefix = path.rstrip("/")
        if "/app/" in path:
            prefix, _, rest = path.partition("/app/")
            self.path_prefix = prefix.rstrip("/")
            self.key = rest.strip("/") or None
        query = urllib.parse.parse_qs(parts.query)
        proto = query.get("protocol", ["2"])[0]
        if proto != "2":
            raise ValueError(f"{raw!r}: this harness only speaks protocol=2")
        extra = sorted(k for k in query if k != "protocol")
        if extra:
            print(
                f"resume_client: ignoring query params {extra}; the SDK builds its own query",
                file=sys.stderr,
            )

    def apply(self, client: SockudoClient) -> None:
        # _socket_url() reads these on every (re)connect attempt.
        client.config.ws_host = self.host
        client.config.ws_port = self.port
        client.config.wss_port = self.port
        client.config.ws_path = self.path_prefix

    def __str__(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self.host}:{self.port}{self.path_prefix}"


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", required=True,
                   help="ws://host:port[/prefix][/app/KEY][?protocol=2] or host:port; repeat to rotate "
                        "through nodes on each SDK reconnect attempt")
    p.add_argument("--key", help="app key (default: taken from /app/KEY in --url)")
    p.add_argument("--secret", help="app secret: sign private-/presence- subscriptions locally")
    p.add_argument("--auth-endpoint", help="use the SDK's HTTP auth endpoint instead of --secret")
    p.add_argument("--user-id", default="py-user", help="user_id in presence channel_data")
    p.add_argument("--channel", action="append", default=[], help="channel to subscribe (repeatable)")
    p.add_argument("channels", nargs="*", help="more channels")
    p.add_argument("--count", type=int, help="exit 0 after this many app events")
    p.add_argument("--deadline", type=float, help="seconds; exit (3 if --count not reached)")
    p.add_argument("--connect-deadline", type=float, default=0.0,
                   help="retry the *initial* connect for this many seconds (default: one attempt)")
    p.add_argument("--max-reconnect-attempts", default="6",
                   help="SDK max_reconnect_attempts (integer or 'none'; SDK default 6)")
    p.add_argument("--activity-timeout", type=float, default=120.0, help="SDK activity_timeout seconds")
    p.add_argument("--no-recovery", action="store_true", help="connection_recovery=False (no sockudo:resume)")
    p.add_argument("--no-dedup", action="store_true",
                   help="message_deduplication=False, so duplicates the server sends are printed")
    p.add_argument("--ignore-stdin", action="store_true", help="do not exit on stdin EOF")
    p.add_argument("--trace", action="store_true", help="also print every raw frame sent/received")
    p.add_argument("--kick-stuck-retry", action="store_true",
                   help="NOT pure SDK behaviour: if the SDK's retry task dies on a failed connect "
                        "(SDK bug, it then never retries), call its own _schedule_retry() again")
    args = p.parse_args(argv)
    args.channel = args.channel + args.channels
    if not args.channel:
        p.error("at least one channel is required")
    try:
        args.targets = [Target(u) for u in args.url]
    except ValueError as exc:
        p.error(str(exc))
    if args.key is None:
        args.key = next((t.key for t in args.targets if t.key), None)
    if not args.key:
        p.error("no app key: pass --key or a URL ending in /app/KEY")
    if len({t.tls for t in args.targets}) > 1:
        p.error("mixing ws:// and wss:// targets is not supported")
    m = args.max_reconnect_attempts.lower()
    args.max_reconnect_attempts = None if m in ("none", "inf", "unlimited") else int(m)
    return args


def make_auth_handler(key: str, secret: str, user_id: str):
    async def handler(request) -> ChannelAuthorizationData:
        channel_data = None
        to_sign = f"{request.socket_id}:{request.channel_name}"
        if request.channel_name.startswith("presence-"):
            channel_data = json.dumps({"user_id": user_id, "user_info": {}}, separators=(",", ":"))
            to_sign += f":{channel_data}"
        sig = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        return ChannelAuthorizationData(auth=f"{key}:{sig}", channel_data=channel_data)

    return handler


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.exit_reason = "stopped"
        self.events = 0
        self.target_index = 0
        self.reported_retry_tasks: set = set()

        auth = ChannelAuthorizationOptions()
        if args.auth_endpoint:
            auth = ChannelAuthorizationOptions(endpoint=args.auth_endpoint)
        elif args.secret:
            auth = ChannelAuthorizationOptions(custom_handler=make_auth_handler(args.key, args.secret, args.user_id))
        first = args.targets[0]
        options = SockudoOptions(
            cluster="local",  # must be non-empty; unused once ws_host is set
            protocol_version=2,
            force_tls=first.tls,
            # Without this the SDK alternates ws:// and wss://(443) on successive reconnects.
            disabled_transports=None if first.tls else [SockudoTransport.WSS],
            ws_host=first.host,
            ws_port=first.port,
            wss_port=first.port,
            ws_path=first.path_prefix,
            activity_timeout=args.activity_timeout,
            connection_recovery=not args.no_recovery,  # SDK default is False!
            message_deduplication=not args.no_dedup,
            max_reconnect_attempts=args.max_reconnect_attempts,
            channel_authorization=auth,
        )
        self.client = SockudoClient(args.key, options)
        self._instrument()

    # -- observation hooks (instance attributes; the SDK's own logic is unchanged) --------------
    def _instrument(self) -> None:
        client = self.client
        orig_send = client.send_event
        orig_raw = client._handle_raw_message

        async def send_event(name: str, data: Any, channel: Optional[str]) -> bool:
            if self.args.trace:
                emit({"type": "sent", "event": name, "channel": channel, "data": data})
            if name == "sockudo:resume":
                emit({"type": "resume_sent", "channel_positions": (data or {}).get("channel_positions")})
            return await orig_send(name, data, channel)

        async def handle_raw(raw: Any) -> None:
            if self.args.trace:
                emit({"type": "recv", "raw": raw if isinstance(raw, str) else repr(raw)})
            await orig_raw(raw)

        client.send_event = send_event
        client._handle_raw_message = handle_raw

        def on_state(change: Any, _meta: Any) -> None:
            current = change.get("current")
            line = {"type": "state", "state": current, "previous": change.get("previous")}
            if current == "connected":
                line["socket_id"] = client.socket_id
            if current == "reconnecting" and len(self.args.targets) > 1:
                # state_change fires right before the SDK opens the new socket.
                self.target_index = (self.target_index + 1) % len(self.args.targets)
                target = self.args.targets[self.target_index]
                target.apply(client)
                line["target"] = str(target)
            emit(line)

        client.bind("state_change", on_state)
        client.bind("sockudo:resume_success", lambda data, _m: emit({
            "type": "resume_success",
            "recovered": (data or {}).get("recovered") if isinstance(data, dict) else None,
            "failed": (data or {}).get("failed") if isinstance(data, dict) else None,
            "data": data,
        }))
        client.bind("sockudo:resume_failed", lambda data, _m: emit({
            "type": "resume_failed",
            "channel": data.get("channel") if isinstance(data, dict) else None,
            "code": data.get("code") if isinstance(data, dict) else None,
            "data": data,
        }))
        client.bind("error", lambda data, _m: emit({"type": "error", "error": data}))

        for name in self.args.channel:
            channel = client.subscribe(name)  # not connected yet: only registers the channel
            self._instrument_channel(channel)

    def _instrument_channel(self, channel: Any) -> None:
        orig_handle = channel.handle

        def handle(event: Any) -> None:
            # Called by the SDK after its message_id dedup, before its own dispatch.
            if not event.event.startswith(SYSTEM_PREFIXES):
                line = {
                    "type": "event",
                    "channel": event.channel,
                    "event": event.event,
                    "serial": event.serial,
                    "message_id": event.message_id,
                    "stream_id": event.stream_id,
                    "data": event.data,
                }
                if event.extras is not None:
                    line["extras"] = event.extras.to_dict()
                emit(line)
                self.events += 1
                if self.args.count is not None and self.events >= self.args.count:
                    self.finish(0, "count")
            orig_handle(event)

        channel.handle = handle
        name = channel.name
        channel.bind("sockudo:subscription_succeeded",
                     lambda data, _m: emit({"type": "subscribed", "channel": name, "data": data}))
        channel.bind("sockudo:subscription_error",
                     lambda data, _m: emit({"type": "subscription_error", "channel": name, "data": data}))

    def finish(self, code: int, reason: str) -> None:
        if not self.stop.is_set():
            self.exit_code = code
            self.exit_reason = reason
            self.stop.set()

    # -- main ------------------------------------------------------------------------------
    async def connect_initial(self) -> bool:
        deadline = time.monotonic() + max(self.args.connect_deadline, 0.0)
        attempt = 0
        while True:
            target = self.args.targets[attempt % len(self.args.targets)]
            self.target_index = attempt % len(self.args.targets)
            target.apply(self.client)
            try:
                await self.client.connect()
                return True
            except Exception as exc:  # OSError, InvalidHandshake, TimeoutError...
                emit({"type": "connect_error", "target": str(target), "error": f"{type(exc).__name__}: {exc}"})
                self.client.socket = None
            attempt += 1
            if time.monotonic() >= deadline or self.stop.is_set():
                return False
            await asyncio.sleep(0.2)

    async def watch_retry_task(self) -> None:
        # The SDK runs each reconnect attempt in a bare task; if opening the socket raises, the task
        # dies and the SDK never tries again. Report that (and optionally re-kick the SDK's retry).
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
            task = self.client._retry_task
            if task is None or not task.done() or task.cancelled() or id(task) in self.reported_retry_tasks:
                continue
            exc = task.exception()
            if exc is None:
                continue
            self.reported_retry_tasks.add(id(task))
            emit({"type": "reconnect_error", "error": f"{type(exc).__name__}: {exc}",
                  "attempts": self.client._reconnect_attempts, "kick": self.args.kick_stuck_retry})
            if self.args.kick_stuck_retry and not self.client._manually_disconnected:
                self.client.socket = None
                await self.client._schedule_retry(self.client._reconnect_delay(None))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.finish, 0, "signal")
        loop.set_exception_handler(
            lambda _l, ctx: print(f"resume_client: loop: {ctx.get('message')} {ctx.get('exception')!r}", file=sys.stderr)
        )

        emit({"type": "start", "targets": [str(t) for t in self.args.targets], "key": self.args.key,
              "channels": self.args.channel, "sdk": "sockudo-python 2.2.0",
              "recovery": not self.args.no_recovery, "dedup": not self.args.no_dedup})
        if not await self.connect_initial():
            if not self.stop.is_set():
                self.finish(2, "connect_failed")
        watcher = asyncio.create_task(self.watch_retry_task())
        if not self.args.ignore_stdin:
            def read_stdin() -> None:
                # os.read, not sys.stdin: a daemon thread blocked inside the buffered reader
                # aborts the interpreter at shutdown.
                try:
                    while os.read(0, 65536):
                        pass
                except OSError:
                    pass
                loop.call_soon_threadsafe(self.finish, 0, "stdin_eof")

            threading.Thread(target=read_stdin, daemon=True).start()
        if self.args.deadline is not None:
            code = 3 if self.args.count is not None else 0
            loop.call_later(self.args.deadline, self.finish, code, "deadline")
        await self.stop.wait()
        watcher.cancel()
        try:
            await asyncio.wait_for(self.client.disconnect(), timeout=3)
        except Exception as exc:
            print(f"resume_client: disconnect: {exc!r}", file=sys.stderr)
        emit({"type": "exit", "reason": self.exit_reason, "code": self.exit_code, "events": self.events})
        return self.exit_code


def main() -> int:
    try:
        args = parse_args(sys.argv[1:])
    except SystemExit as exc:
        return 64 if exc.code not in (0, None) else 0
    return asyncio.run(Harness(args).run())


if __name__ == "__main__":
    sys.exit(main())
