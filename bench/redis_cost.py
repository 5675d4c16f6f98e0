"""What leasegate costs Redis: commands, round trips, memory, from INFO counters.

Counters come from INFO: `commandstats` (every command executed, those inside Lua
scripts included), `total_commands_processed` (the same, summed) and
`total_reads_processed` (socket reads of client connections: with a request-reply client
one read is one round trip, a pipeline arriving in one read is one). The benchmark's own
commands (INFO, MEMORY STATS, ZCARD, ECHO markers, FLUSHALL) are counted by `Probe` and
taken off.

The exact sequence of commands (MONITOR) is bench/monitor.py's; this module also names
leasegate's Lua scripts for it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import redis

try:
    from app.keys import ACTIVE_SESSIONS
except ImportError:  # app/ mid-rewrite: the key it has always had
    ACTIVE_SESSIONS = "lg:sessions:active"

OWN_COMMANDS = {"info", "memory", "zcard", "echo", "monitor", "ping", "flushall"}
MARKER = "bench-message-"
"""ECHOed before each message of a MONITOR sample."""
REPLIED = "bench-replied-"
"""ECHOed once the message's response has arrived."""
MONITOR_LINE = re.compile(r'^\+(?P<ts>[\d.]+) \[\d+ (?P<client>[^\]]+)\] "(?P<cmd>[^"]+)"'
                          r'(?: "(?P<arg>[^"]*)")?')  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    calls: dict[str, int]
    processed: int
    reads: int
    used_memory: int
    """`used_memory` less what client connections take (MEMORY STATS `clients.normal`):
    the data's, not that of buffers of however many connections the servers opened."""
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
        self.sent += 2
        clients = int(self.client.memory_stats().get("clients.normal", 0))
        info: dict[str, Any] = self.client.info("all")
        calls = {
            key.removeprefix("cmdstat_").lower(): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        return Snapshot(calls, int(info["total_commands_processed"]),
                        int(info["total_reads_processed"]), int(info["used_memory"]) - clients,
                        self.sent)  # fmt: skip

    def indexed_sessions(self) -> int:
        self.sent += 1
        return int(self.client.zcard(ACTIVE_SESSIONS))

    def mark(self, number: int) -> None:
        self.sent += 1
        self.client.echo(f"{MARKER}{number}")

    def replied(self, number: int) -> None:
        self.sent += 1
        self.client.echo(f"{REPLIED}{number}")

    def flush(self) -> None:
        """Empty Redis (its script cache stays): only while no server under test runs."""
        self.sent += 1
        self.client.flushall()

    def pid(self) -> int:
        return int(self.client.info("server")["process_id"])

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def close(self) -> None:
        self.client.close()


# --- script names -----------------------------------------------------------------------


def script_names(loaded: dict[str, str] | None = None) -> dict[str, str]:
    """sha1 -> name of leasegate's Lua scripts (as EVALSHA shows them), without relying on
    how app/ registers them: every module-level string constant in app/ that calls
    `redis.call` is a candidate, named after its constant (lower case; prefixed with its
    package when two constants share a name). A script registered as the constant is found
    by the constant's sha1; one that was built from it (e.g. with constants baked in) is
    found among `loaded` (sha1 -> source, from the SCRIPT LOAD lines of a MONITOR) as the
    loaded source that contains it. Unknown scripts are shown by their sha1's first 8
    characters."""
    constants = _lua_constants()
    names = {_sha1(text): name for name, text in constants.items()}
    loaded = loaded or {}
    for sha, source in loaded.items():
        found = [(name, text) for name, text in constants.items() if text.strip() in source]
        if found and sha not in names:
            # the most specific constant: the one that the fewest loaded sources contain
            def spread(item: tuple[str, str]) -> tuple[int, int]:
                return (sum(item[1].strip() in s for s in loaded.values()), -len(item[1]))

            names[sha] = min(found, key=spread)[0]
    return names


def _lua_constants() -> dict[str, str]:
    import importlib
    import pkgutil

    import app

    found: dict[str, list[tuple[str, str]]] = {}
    for module_info in pkgutil.walk_packages(app.__path__, "app."):
        try:
            module = importlib.import_module(module_info.name)
        except Exception:  # a module that does not import (e.g. mid-rewrite) names nothing
            continue
        for attr, value in vars(module).items():
            if attr.isupper() and isinstance(value, str) and "redis.call(" in value:
                package = module_info.name.split(".")[1]
                found.setdefault(attr.lower(), []).append((package, value))
    names: dict[str, str] = {}
    for name, places in found.items():
        unique = {text: package for package, text in places}
        for text, package in unique.items():
            names[f"{package}.{name}" if len(unique) > 1 else name] = text
    return names


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def loaded_scripts(lines: list[str]) -> dict[str, str]:
    """sha1 -> source of every SCRIPT LOAD (and EVAL) in MONITOR lines."""
    sources = {}
    for line in lines:
        found = MONITOR_LINE.match(line)
        if found is None or found["cmd"].lower() not in ("script", "eval"):
            continue
        tokens = monitor_tokens(line)
        if len(tokens) >= 3 and [t.lower() for t in tokens[:2]] == ["script", "load"]:
            sources[_sha1(tokens[2])] = tokens[2]
        elif len(tokens) >= 2 and tokens[0].lower() == "eval":
            sources[_sha1(tokens[1])] = tokens[1]
    return sources


ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "\\": "\\", '"': '"'}


def monitor_tokens(line: str) -> list[str]:
    """The quoted arguments of a MONITOR line, unescaped (Redis writes them with
    sdscatrepr: backslash escapes and \\xHH)."""
    text = line.split("] ", 1)[1] if "] " in line else line
    tokens: list[str] = []
    current: list[str] | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if current is None:
            if char == '"':
                current = []
        elif char == '"':
            tokens.append("".join(current))
            current = None
        elif char == "\\" and index + 1 < len(text):
            escaped = text[index + 1]
            if escaped == "x" and index + 3 < len(text):
                current.append(chr(int(text[index + 2 : index + 4], 16)))
                index += 2
            else:
                current.append(ESCAPES.get(escaped, escaped))
            index += 1
        else:
            current.append(char)
        index += 1
    return tokens
