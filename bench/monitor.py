"""The exact commands leasegate sends Redis, from MONITOR.

A MONITOR line shows each command as Redis executes it, with the client that sent it, or
`lua` for a command run inside a script. Message samples are split by ECHO markers from
the benchmark's probe: `bench-message-N` before message N is posted, `bench-replied-N`
once its response has arrived, so a message's commands divide into its request path (up
to the response) and what follows it (e.g. the run of a 202 admission). The sweeper's
commands, and those of its scripts, belong to no message and are left out.

A round trip is a batch: a client's commands that arrived together (a pipeline), told
apart from the next round trip by the time a reply and a wake-up take (PIPELINE_GAP).
Redis reads a client's input 16 KiB at a time, so a pipeline larger than that (the
sweeper's page of hundreds of scripts) reaches it in several reads, between which other
clients may be served and time passes: where a client's batch stops just short of a
multiple of 16 KiB (by less than its next command's size), the read buffer, not the
client, ended it, and the client's next command goes on with it. (A reply and a new
request take the client a while, a read boundary does not: timing alone cannot tell them
apart once other clients are served in between.) A pipeline that reached Redis in pieces
of other sizes (its client still writing) may still count more than once: these round
trips err high, not low. INFO's `total_reads_processed` counts such a pipeline once per
read.
"""

from __future__ import annotations

import socket
import statistics
import threading
from collections import Counter
from dataclasses import dataclass, field

from bench.redis_cost import MARKER, MONITOR_LINE, OWN_COMMANDS, REPLIED

PIPELINE_GAP = 100e-6  # seconds: a pipeline arrives in one read; a new round trip is slower
READ_SIZE = 16 * 1024
"""Bytes Redis reads from a client at a time (PROTO_IOBUF_LEN)."""
SIZE_ERROR = 0.02
"""How far off the protocol size estimated from MONITOR's text may be."""
CHUNK_GAP = 0.01
"""Seconds within which the rest of a pipeline cut by a read follows."""
SWEEPER_COMMANDS = {"ZRANGE", "ZRANGEBYSCORE", "ZSCAN", "ZREM"}
SWEEPER_SCRIPTS = ("recover", "forget", "acquire", "sweep")
"""What the sweeper sends: it pages the session index and runs its recover and forget
scripts; `acquire` takes its sweep lease (messages take theirs with their admission)."""
HEARTBEAT_SCRIPTS = ("renew",)


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
                    chunk = sock.recv(1 << 20)
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


@dataclass(frozen=True)
class Command:
    at: float
    client: str
    name: str
    arg: str
    """The script's name for EVALSHA and EVAL, else empty."""
    size: int = 0
    """About how many bytes of protocol the command took."""

    @property
    def in_script(self) -> bool:
        return self.client == "lua"

    @property
    def label(self) -> str:
        return f"{self.name.upper()} {self.arg}".strip()


def commands(lines: list[str], scripts: dict[str, str]) -> list[Command]:
    parsed = []
    for line in lines:
        found = MONITOR_LINE.match(line)
        if found is None:
            continue
        name, arg = found["cmd"].lower(), found["arg"] or ""
        label = scripts.get(arg, arg[:8]) if name in ("evalsha", "eval") else ""
        size = len(line) - found.start("cmd") + 4 * line.count('" "') + 8
        parsed.append(Command(float(found["ts"]), found["client"], name, label, size))
    return parsed


def is_sweeper(command: Command) -> bool:
    if command.name in ("evalsha", "eval"):
        return any(part in command.arg for part in SWEEPER_SCRIPTS)
    return command.name.upper() in SWEEPER_COMMANDS


def is_heartbeat(command: Command) -> bool:
    return command.name in ("evalsha", "eval") and any(p in command.arg for p in HEARTBEAT_SCRIPTS)


# --- message samples --------------------------------------------------------------------


@dataclass
class Message:
    request: list[Command] = field(default_factory=list)
    """From the message's marker until its response had arrived."""
    after: list[Command] = field(default_factory=list)
    """From then until the next message's marker."""

    @property
    def all(self) -> list[Command]:
        return self.request + self.after


def parse_messages(lines: list[str], scripts: dict[str, str]) -> list[Message]:
    """One Message per `bench-message-N` marker, without the sweeper's commands and the
    probe's own."""
    messages: list[Message] = []
    sweeping = replied = False
    for line in lines:
        parsed = commands([line], scripts)
        if not parsed:
            continue
        command = parsed[0]
        if not command.in_script:
            sweeping = is_sweeper(command)
        if command.name == "echo":
            if f'"{MARKER}' in line:
                messages.append(Message())
                replied = False
            elif f'"{REPLIED}' in line:
                replied = True
        elif messages and command.name not in OWN_COMMANDS and not sweeping:
            part = messages[-1].after if replied else messages[-1].request
            part.append(command)
    return messages


@dataclass(frozen=True)
class Sequence:
    """What a MONITOR sample shows per message."""

    messages: int
    top_level: dict[str, float]
    """Commands a client sent, per message (EVALSHA by script name), request path and
    after together."""
    in_scripts: dict[str, float]
    """Commands run inside Lua scripts, per message, request path and after together."""
    example: list[str]
    """The client commands of one message's request path, in order, a pipeline's joined
    by " + "."""
    example_after: list[str]
    """The same for what followed that message's response."""
    round_trips: list[int]
    """Per message: round trips (client batches) in the request path."""
    commands: list[int]
    """Per message: commands executed in the request path, scripts' inner ones included."""
    after_round_trips: list[int]
    after_commands: list[int]

    @staticmethod
    def median(values: list[int]) -> float:
        return float(statistics.median(values)) if values else 0.0

    @staticmethod
    def mean(values: list[int]) -> float:
        return statistics.fmean(values) if values else 0.0


def summarize(messages: list[Message]) -> Sequence:
    top: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    for message in messages:
        for command in message.all:
            if command.in_script:
                inner[command.name.upper()] += 1
            else:
                top[command.label] += 1
    count = max(1, len(messages))
    middle = messages[len(messages) // 2] if messages else Message()
    return Sequence(
        len(messages),
        {name: n / count for name, n in top.most_common()},
        {name: n / count for name, n in inner.most_common()},
        _example(middle.request),
        _example(middle.after),
        [len(batches(m.request)) for m in messages],
        [len(m.request) for m in messages],
        [len(batches(m.after)) for m in messages],
        [len(m.after) for m in messages],
    )


def _example(commands: list[Command]) -> list[str]:
    return [" + ".join(c.label for c in batch) for batch in batches(commands)]


def batches(commands: list[Command]) -> list[list[Command]]:
    """Client commands, those that arrived together (a pipeline) in one batch: the same
    client, nothing from another client in between, and started within PIPELINE_GAP of
    the end of the previous one (a new round trip takes a reply and a wake-up first); or
    the rest of a pipeline that one read could not hold (see the module's doc)."""
    grouped: list[list[Command]] = []
    open_batches: dict[str, tuple[list[Command], int]] = {}
    last_at: dict[str, float] = {}
    last_client = ""  # whose command ran last: a script's inner commands are its
    for command in commands:
        if command.in_script:
            last_at[last_client] = command.at
            continue
        client = command.client
        batch, size = open_batches.get(client, ([], 0))
        gap = command.at - last_at.get(client, float("-inf"))
        together = client == last_client and gap < PIPELINE_GAP
        if batch and (together or (gap < CHUNK_GAP and _cut_by_read(size, command.size))):
            batch.append(command)
            open_batches[client] = (batch, size + command.size)
        else:
            grouped.append([command])
            open_batches[client] = (grouped[-1], command.size)
        last_at[client], last_client = command.at, client
    return grouped


def _cut_by_read(size: int, following: int) -> bool:
    """Whether a batch of `size` bytes ends where a 16 KiB read would have cut it: short of
    the next multiple of READ_SIZE by less than the command that follows."""
    if following > READ_SIZE / 4 or size < READ_SIZE - following - SIZE_ERROR * READ_SIZE:
        return False  # a big command is read whole; a batch this small fits one read
    room = -size % READ_SIZE
    slack = SIZE_ERROR * size + 64
    return room < following + slack or READ_SIZE - room < slack


# --- rates at rest ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """Round trips per second in a MONITOR window, by who sent them (a round trip is a
    batch; a pipeline of the sweeper's hundreds of scripts is one)."""

    seconds: float
    heartbeat: float
    """Heartbeat renewals (batches that start with a script named renew)."""
    sweeper: float
    """The sweeper's batches."""
    other: float
    """Every other batch (the probe's own commands left out)."""
    top_level: float
    """Commands sent by clients per second (a pipeline's each counted)."""
    in_scripts: float
    """Commands run inside scripts per second."""

    @property
    def round_trips(self) -> float:
        return self.heartbeat + self.sweeper + self.other


def rates(lines: list[str], scripts: dict[str, str], seconds: float) -> Rates:
    parsed = [c for c in commands(lines, scripts) if c.name not in OWN_COMMANDS]
    kinds: Counter[str] = Counter()
    for batch in batches(parsed):
        first = batch[0]
        kinds["heartbeat" if is_heartbeat(first) else "sweeper" if is_sweeper(first) else ""] += 1
    inner = sum(1 for c in parsed if c.in_script)
    span = max(seconds, 1e-9)
    return Rates(seconds, kinds["heartbeat"] / span, kinds["sweeper"] / span, kinds[""] / span,
                 (len(parsed) - inner) / span, inner / span)  # fmt: skip
