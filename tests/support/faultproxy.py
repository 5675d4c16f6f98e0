"""A fault-injecting TCP proxy between a redis-py client and a real redis-server, for tests.

It is here to prove that every Lua script of the service answers a re-sent call exactly as
it answered the first. redis-py re-sends a command whose reply was lost (its Retry, on a
ConnectionError or TimeoutError), so one call can run a script twice. `drop_reply` makes
that happen at will: Redis executes the command, the proxy withholds its reply and drops
the connection, and the client re-sends the command on a new connection. `hang`/`release`
(every connection) and `hang_after`/`release` (one) hold replies for a while instead, as
when Redis answers late: past the client's socket timeout, that is a re-send too.

    async with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        client = create_redis(Settings(redis_url=proxy.url))
        fault = proxy.drop_reply(evalsha_of(script.sha))
        ...  # call the script once
        assert fault.fired.is_set()

The proxy parses RESP2/RESP3 just enough to find where each command and each reply ends,
and matches replies to commands in order, pipelined ones too. A connection that sends
SUBSCRIBE (or PSUBSCRIBE, SSUBSCRIBE, MONITOR, CLIENT REPLY) is relayed as it is from then
on: its replies no longer follow its commands one for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

Matcher = Callable[[list[bytes]], bool]

LISTEN_HOST = "127.0.0.1"
READ_SIZE = 64 * 1024
CLOSE_TIMEOUT = 5.0

# Reply types, by first byte: one line; a length then that many bytes; a count then that
# many replies (a map: twice as many; an attribute: twice as many, then the reply itself).
_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATE_TYPES = frozenset(b"*~>")
_MAP_TYPES = frozenset(b"%")
_ATTRIBUTE = ord("|")
_PUSH = ord(">")
_ARRAY = ord("*")
_BULK = ord("$")

# After one of these commands, replies stop following commands one for one.
_UNMATCHED_COMMANDS = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR"})


class RespError(ValueError):
    """Bytes that are not RESP as this proxy understands it."""


def _length(buf: bytes | bytearray, start: int, end: int) -> int:
    try:
        return int(buf[start:end])
    except ValueError:
        raise RespError(f"bad length {bytes(buf[start:end])!r}") from None


def reply_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """Where the RESP2/RESP3 reply that starts at `pos` ends, or None while it is incomplete."""
    remaining = 1
    while remaining:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        kind = buf[pos]
        remaining -= 1
        if kind in _LINE_TYPES:
            pos = eol + 2
            continue
        length = _length(buf, pos + 1, eol)
        pos = eol + 2
        if kind in _BLOB_TYPES:
            if length >= 0:  # -1: null
                pos += length + 2
                if pos > len(buf):
                    return None
        elif kind in _AGGREGATE_TYPES:
            remaining += max(length, 0)
        elif kind in _MAP_TYPES:
            remaining += 2 * max(length, 0)
        elif kind == _ATTRIBUTE:
            remaining += 2 * length + 1
        else:
            raise RespError(f"unknown reply type {chr(kind)!r}")
    return pos


def parse_command(buf: bytes | bytearray, pos: int = 0) -> tuple[list[bytes], int] | None:
    """The arguments of the command that starts at `pos` and where it ends, or None while it
    is incomplete. An inline command (a plain line) is split on whitespace."""
    if buf[pos] != _ARRAY:
        newline = buf.find(b"\n", pos)
        if newline < 0:
            return None
        return bytes(buf[pos:newline]).split(), newline + 1
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    count = _length(buf, pos + 1, eol)
    pos = eol + 2
    args: list[bytes] = []
    for _ in range(count):
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        if buf[pos] != _BULK:
            raise RespError("a command's argument is not a bulk string")
        start = eol + 2
        end = start + _length(buf, pos + 1, eol)
        if end + 2 > len(buf):
            return None
        args.append(bytes(buf[start:end]))
        pos = end + 2
    return args, pos


def command(name: str) -> Matcher:
    """Matches the commands named `name` (any case), e.g. command("INCR")."""
    wanted = name.upper().encode()

    def match(args: list[bytes]) -> bool:
        return bool(args) and args[0].upper() == wanted

    return match


def evalsha_of(sha: str) -> Matcher:
    """Matches the runs of the script whose SHA1 is `sha`: EVALSHA <sha> (or EVALSHA_RO), and
    EVAL (or EVAL_RO) of a script body that hashes to it, so a fallback to EVAL matches too."""
    wanted = sha.lower()

    def match(args: list[bytes]) -> bool:
        if len(args) < 2:
            return False
        name = args[0].upper()
        if name in (b"EVALSHA", b"EVALSHA_RO"):
            return args[1].decode("ascii", "replace").lower() == wanted
        if name in (b"EVAL", b"EVAL_RO"):
            return hashlib.sha1(args[1], usedforsecurity=False).hexdigest() == wanted
        return False

    return match


class Fault:
    """An armed fault: the next `times` commands that `match` get it when their reply comes.

    `fired` is set the first time it takes effect, `count` says how many times it did, and
    `commands` lists the commands it matched (a matched command whose connection dropped
    for another reason before its reply came is listed but not counted).
    """

    def __init__(self, kind: Literal["drop", "hang"], match: Matcher, times: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        self.kind = kind
        self.match = match
        self.remaining = times
        self.fired = asyncio.Event()
        self.count = 0
        self.commands: list[list[bytes]] = []

    def claim(self, args: list[bytes]) -> bool:
        """Take `args` if this fault is still armed and matches it."""
        if self.remaining <= 0 or not self.match(args):
            return False
        self.remaining -= 1
        self.commands.append(args)
        return True

    def fire(self) -> None:
        self.count += 1
        self.fired.set()


@dataclass(slots=True)
class _Pending:
    """A command sent upstream whose reply has not been relayed yet."""

    args: list[bytes]
    fault: Fault | None = None
    unmatched: bool = False  # from this command on, replies are relayed as they come


class _Link:
    """One client connection and its own upstream connection, relayed both ways."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self._proxy = proxy
        self._client_reader, self._client_writer = client
        self._upstream_reader, self._upstream_writer = upstream
        self._pending: deque[_Pending] = deque()
        self._commands = bytearray()  # client bytes not parsed into commands yet
        self._replies = bytearray()  # server bytes not relayed yet
        self._parsing = True  # commands are still parsed (for counting and matching)
        self._matching = True  # replies still follow commands one for one
        self._raw = False  # replies are relayed without parsing
        self._upstream_done = False  # the server closed; relay what is held, then close
        self.hold = False  # hold this connection's replies (hang_after) until release()
        self.closed = False

    @property
    def held(self) -> bool:
        return self.hold or self._proxy.hung

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._client_to_server())
                group.create_task(self._server_to_client())
        finally:
            self.close()
            for writer in (self._client_writer, self._upstream_writer):
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def close(self) -> None:
        """Close both connections, after what was already written to each is sent."""
        if not self.closed:
            self.closed = True
            self._client_writer.close()
            self._upstream_writer.close()

    def abort(self) -> None:
        self.closed = True
        for writer in (self._client_writer, self._upstream_writer):
            writer.transport.abort()

    async def _client_to_server(self) -> None:
        try:
            while not self.closed:
                data = await self._client_reader.read(READ_SIZE)
                if not data:
                    break
                self._take_commands(data)
                if self.closed:
                    break
                self._upstream_writer.write(data)
                await self._upstream_writer.drain()
        except OSError:
            pass
        finally:
            self.close()

    async def _server_to_client(self) -> None:
        try:
            while not self.closed:
                data = await self._upstream_reader.read(READ_SIZE)
                if not data:
                    self._upstream_done = True
                    break
                self._replies += data
                self.pump()
                if not self.closed:
                    await self._client_writer.drain()
        except OSError:
            pass
        finally:
            if not (self._upstream_done and self.held):
                self.close()  # while held, release() relays what is held, then closes

    def _take_commands(self, data: bytes) -> None:
        if not self._parsing:
            return
        buf = self._commands
        buf += data
        pos = 0
        try:
            while pos < len(buf) and (parsed := parse_command(buf, pos)) is not None:
                args, pos = parsed
                if args:  # an empty command gets no reply
                    self._register(args)
        except RespError:
            self._parsing = False
            self._pending.append(_Pending([], unmatched=True))
            buf.clear()
            return
        del buf[:pos]

    def _register(self, args: list[bytes]) -> None:
        name = args[0].upper()
        self._proxy.seen[name] += 1
        if not self._matching:
            return
        entry = _Pending(args)
        subcommand = args[1].upper() if len(args) > 1 else b""
        if name in _UNMATCHED_COMMANDS or (name == b"CLIENT" and subcommand == b"REPLY"):
            entry.unmatched = True
            self._matching = False
        else:
            entry.fault = self._proxy.claim(args)
        self._pending.append(entry)

    def pump(self) -> None:
        """Relay the complete replies received so far, applying faults, unless held."""
        if self.closed or self.held:
            return
        buf = self._replies
        sent = 0
        while sent < len(buf):
            end = self._next_reply(sent)
            if end is None:
                break
            if end < 0:  # withheld: relay what came before it, then drop the connection
                self._client_writer.write(bytes(buf[:sent]))
                self.close()
                return
            sent = end
        if sent:
            self._client_writer.write(bytes(buf[:sent]))
            del buf[:sent]
        if self._upstream_done and not self.held:
            self.close()  # the server closed: what it sent in full is relayed

    def _next_reply(self, pos: int) -> int | None:
        """Where the reply at `pos` ends if it may be relayed; None to hold it (incomplete,
        or hung from it on); -1 when it is withheld and the connection must drop."""
        buf = self._replies
        if self._raw:
            return len(buf)
        try:
            end = reply_end(buf, pos)
        except RespError:
            self._raw = True
            return len(buf)
        if end is None or buf[pos] == _PUSH or not self._pending:
            return end  # a push, or a reply to no command seen, is relayed as it is
        head = self._pending[0]
        if head.unmatched:
            self._raw = True
            return len(buf)
        fault, head.fault = head.fault, None
        if fault is not None:
            fault.fire()
            if fault.kind == "drop":
                return -1
            self.hold = True
            return None
        self._pending.popleft()
        return end


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of one Redis, with faults to arm; see the module doc.

    Each client connection gets its own upstream connection. Use it as an async context
    manager: leaving it closes the listener and every connection.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.seen: Counter[bytes] = Counter()
        self.hung = False
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._closing = False
        self._faults: list[Fault] = []
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not started: use `async with FaultProxy(...)`")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LISTEN_HOST}:{self.port}/0"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, LISTEN_HOST, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.close_all()
        await self._wait_tasks()
        for link in list(self._links):
            link.abort()  # some peer did not take what was written to it
        await self._wait_tasks()
        stuck = list(self._tasks)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._errors and exc is None:
            raise BaseExceptionGroup("fault proxy connections failed", self._errors)

    def drop_reply(self, match: Matcher, times: int = 1) -> Fault:
        """Withhold the reply of the next `times` commands that `match`, each time dropping
        the connection instead: Redis executes the command, and the client sees the
        replies before it, then a closed connection. Replies after it are lost too."""
        return self._arm(Fault("drop", match, times))

    def hang_after(self, match: Matcher) -> Fault:
        """Hold the replies of one connection, from the reply of the next command that `match`
        on, until `release`: that reply comes late, as if Redis were slow to answer it. Other
        connections (the client's retry on a new one among them) go on as usual."""
        return self._arm(Fault("hang", match, 1))

    def hang(self) -> None:
        """Hold every reply (on every connection) until `release`; commands still go through,
        so Redis executes them while the clients wait."""
        self.hung = True

    def release(self) -> None:
        """Relay every reply held (by `hang` or `hang_after`), and relay them as they come again."""
        self.hung = False
        for link in list(self._links):
            link.hold = False
            link.pump()

    def close_all(self) -> None:
        """Drop every open connection now (what was already relayed is still delivered)."""
        for link in list(self._links):
            link.close()

    def commands_seen(self, name: bytes) -> int:
        """How many commands named `name` (any case) went through, on every connection."""
        return self.seen[name.upper()]

    def claim(self, args: list[bytes]) -> Fault | None:
        """The first armed fault that takes the command `args`, if any."""
        for fault in self._faults:
            if fault.claim(args):
                return fault
        return None

    def _arm(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            client_writer.close()
            return
        task = asyncio.create_task(self._serve(client_reader, client_writer))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._errors.append(error)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            client_writer.close()
            with contextlib.suppress(Exception):
                await client_writer.wait_closed()
            return
        link = _Link(self, (client_reader, client_writer), upstream)
        if self._closing:
            link.close()
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)

    async def _wait_tasks(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT)
