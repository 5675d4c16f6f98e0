"""What one message costs Redis: commands, round trips, memory.

Counters come from INFO: `commandstats` (every command executed, those inside Lua
scripts included), `total_commands_processed` (the same, summed) and
`total_reads_processed` (socket reads of client connections: with a request-reply client
one read is one round trip, a pipeline arriving in one read is one). The benchmark's own
commands (INFO, ZCARD, ECHO markers) are counted by `Probe` and taken off.

`Monitor` records a short sample with MONITOR, split per message by ECHO markers, to
show the exact sequence: which commands a client sent, and which ran inside a script.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from app.keys import ACTIVE_SESSIONS

OWN_COMMANDS = {"info", "zcard", "echo", "monitor", "ping"}
MARKER = "bench-message-"
SWEEPER = {"ZRANGE", "EVALSHA recover", "EVALSHA forget", "EVALSHA acquire"}
"""What the sweeper sends (`acquire`: its sweep lease; messages take leases by `admit`)."""
PIPELINE_GAP = 100e-6  # seconds: a pipeline arrives in one read; a new round trip is slower
MONITOR_LINE = re.compile(r'^\+(?P<ts>[\d.]+) \[\d+ (?P<client>[^\]]+)\] "(?P<cmd>[^"]+)"'
                          r'(?: "(?P<arg>[^"]*)")?')  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    calls: dict[str, int]
    processed: int
    reads: int
    used_memory: int
    sent: int = 0
    """Commands the probe had sent when this snapshot was taken (its own INFO included)."""

    def minus(self, before: Snapshot) -> Snapshot:
        """Counters between `before` and this one, without the probe's own commands: those
        sent in between, and one of the two INFOs (each counts the other's read or call)."""
        own = self.sent - before.sent
        calls = {
            name: count - before.calls.get(name, 0)
            for name, count in self.calls.items()
            if name not in OWN_COMMANDS and count > before.calls.get(name, 0)
        }
        return Snapshot(
            calls,
            self.processed - before.processed - own,
            self.reads - before.reads - own,
            self.used_memory - before.used_memory,
        )

    def per(self, messages: int) -> dict[str, float]:
        return {name: count / messages for name, count in self.calls.items()}


class Probe:
    """The benchmark's own connection to Redis; counts the commands it sends."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.port = int(self.client.connection_pool.connection_kwargs["port"])
        self.sent = 0

    def snapshot(self) -> Snapshot:
        self.sent += 1
        info: dict[str, Any] = self.client.info("all")
        calls = {
            key.removeprefix("cmdstat_").lower(): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        return Snapshot(calls, int(info["total_commands_processed"]),
                        int(info["total_reads_processed"]), int(info["used_memory"]),
                        self.sent)  # fmt: skip

    def indexed_sessions(self) -> int:
        self.sent += 1
        return int(self.client.zcard(ACTIVE_SESSIONS))

    def mark(self, number: int) -> None:
        self.sent += 1
        self.client.echo(f"{MARKER}{number}")

    def pid(self) -> int:
        return int(self.client.info("server")["process_id"])

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def close(self) -> None:
        self.client.close()


# --- script names -----------------------------------------------------------------------


def script_names() -> dict[str, str]:
    """sha1 -> name of every Lua script leasegate registers (as EVALSHA shows it)."""
    from app.locks.scripts import LeaseScripts
    from app.sessions.scripts import SessionScripts
    from app.subscriptions.scripts import SubscriptionScripts

    client = AsyncRedis()  # never connects: registering a script only hashes its source
    names: dict[str, str] = {}
    for registry in (SessionScripts, LeaseScripts, SubscriptionScripts):
        scripts = registry.register(client)
        for item in dataclasses.fields(scripts):
            names[getattr(scripts, item.name).sha] = item.name
    return names


# --- MONITOR ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    at: float
    client: str
    name: str
    arg: str

    @property
    def in_script(self) -> bool:
        return self.client == "lua"


@dataclass
class Monitor:
    """MONITOR on its own socket, read by a thread until `stop()`."""

    host: str
    port: int
    lines: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("MONITOR did not start")
        return self

    def stop(self) -> list[str]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self.lines

    def _read(self) -> None:
        with socket.create_connection((self.host, self.port)) as sock:
            sock.sendall(b"MONITOR\r\n")
            sock.settimeout(0.1)
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                *complete, buffer = buffer.split(b"\r\n")
                self._keep(complete)

    def _keep(self, lines: list[bytes]) -> None:
        for line in lines:
            if line == b"+OK":
                self._ready.set()
            else:
                self.lines.append(line.decode(errors="replace"))


def parse_monitor(lines: list[str], scripts: dict[str, str]) -> list[list[Command]]:
    """The commands between one ECHO marker and the next: one list per message. The
    sweeper's commands (and those of its scripts) are left out: they are no message's."""
    messages: list[list[Command]] = []
    sweeping = False
    for line in lines:
        found = MONITOR_LINE.match(line)
        if found is None:
            continue
        name, arg = found["cmd"].lower(), found["arg"] or ""
        label = scripts.get(arg, arg[:8]) if name in ("evalsha", "eval") else ""
        command = Command(float(found["ts"]), found["client"], name, label)
        if not command.in_script:
            sweeping = _label(command) in SWEEPER
        if name == "echo" and arg.startswith(MARKER):
            messages.append([])
        elif messages and name not in OWN_COMMANDS and not sweeping:
            messages[-1].append(command)
    return messages


@dataclass(frozen=True)
class Sequence:
    """What the MONITOR sample shows per message."""

    messages: int
    top_level: dict[str, float]
    """Commands a client sent, per message (EVALSHA by script name)."""
    in_scripts: dict[str, float]
    """Commands run inside Lua scripts, per message."""
    example: list[str]
    """The client commands of one message, in order, a pipeline's joined by " + "."""
    batches: float
    """Client batches (round trips) per message, a pipeline counted once."""


def summarize(messages: list[list[Command]]) -> Sequence:
    top: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    for commands in messages:
        for command in commands:
            if command.in_script:
                inner[command.name.upper()] += 1
            else:
                top[_label(command)] += 1
    count = max(1, len(messages))
    middle = messages[len(messages) // 2] if messages else []
    example = [" + ".join(_label(c) for c in batch) for batch in batches(middle)]
    return Sequence(
        len(messages),
        {name: n / count for name, n in top.most_common()},
        {name: n / count for name, n in inner.most_common()},
        example,
        sum(len(batches(commands)) for commands in messages) / count,
    )


def batches(commands: list[Command]) -> list[list[Command]]:
    """A message's client commands, those that arrived together (a pipeline) in one batch:
    same client, nothing from another client in between, and started within PIPELINE_GAP
    of the end of the previous one (a new round trip takes a reply and a wake-up first)."""
    grouped: list[list[Command]] = []
    last_at, last_client = 0.0, ""
    for command in commands:
        if command.in_script:
            last_at = command.at
            continue
        if grouped and command.client == last_client and command.at - last_at < PIPELINE_GAP:
            grouped[-1].append(command)
        else:
            grouped.append([command])
        last_at, last_client = command.at, command.client
    return grouped


def _label(command: Command) -> str:
    return f"{command.name.upper()} {command.arg}".strip()
