"""The operator commands: what a running leasegate is doing, and stopping what it should not.

Each reads LEASEGATE_URL and LEASEGATE_INTERNAL_SECRET, prints a table (or, with --json,
the API's own JSON), and exits 1 on an error answer or an unreachable service, 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import httpx

from app.cli.api import CommandError, OperatorApi
from app.cli.tables import duration, fields, table

Transport = httpx.BaseTransport | None
_transport: Transport = None
"""Tests route the commands through an httpx MockTransport here."""


def use_transport(transport: Transport) -> None:
    global _transport
    _transport = transport


def add_parsers(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    def command(name: str, help_text: str, run: Callable[..., object]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, parents=[common]
        )
        parser.set_defaults(handler=lambda args: _execute(run, args))
        return parser

    sessions = command("sessions", "list sessions with work (busy ones with --busy)", _sessions)
    sessions.add_argument("--busy", action="store_true", help="only busy sessions")
    sessions.add_argument("--tenant", help="only this tenant's sessions")
    for name, help_text, run in (
        ("session", "one session: state, holder, queue, last runs", _session),
        ("stop", "stop a session's active run and cancel its queue", _stop),
        ("reset", "stop a session and start its conversation afresh", _reset),
    ):
        command(name, help_text, run).add_argument("session", metavar="TENANT/ID")
    command("cancel", "cancel one run", _cancel).add_argument("run_id", metavar="RUN_ID")
    command("agents", "agents, their subscriptions and switches", _agents)
    command("workers", "workers alive, what they hold", _workers)


def _execute(run: Callable[[OperatorApi, argparse.Namespace], object], args: Any) -> int:
    try:
        api = OperatorApi.from_environment(_transport)
        try:
            result = run(api, args)
        finally:
            api.close()
    except CommandError as exc:
        print(f"leasegate {args.command}: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _session_ref(value: str) -> tuple[str, str]:
    tenant, slash, session_id = value.partition("/")
    if not (slash and tenant and session_id):
        raise CommandError(f"{value!r}: give the session as TENANT/ID, e.g. acme/chat-1", 2)
    return tenant, session_id


def _sessions(api: OperatorApi, args: Any) -> object:
    sessions = api.sessions(busy=args.busy, tenant=args.tenant)
    if not args.json:
        rows = []
        for s in sessions:
            holder = s.get("holder") or {}
            run = s.get("active_run") or {}
            rows.append(
                [
                    s.get("tenant"),
                    s.get("session_id"),
                    "busy" if s.get("busy") else "idle",
                    holder.get("worker"),
                    holder.get("fence"),
                    duration(holder.get("lease_expires_in_ms")),
                    run.get("run_id"),
                    run.get("status"),
                    duration(run.get("age_ms")),
                    len(s.get("queued") or []),
                ]
            )
        headers = ["TENANT", "SESSION", "STATE", "HOLDER", "FENCE", "LEASE LEFT", "ACTIVE RUN"]
        print(table([*headers, "STATUS", "AGE", "QUEUED"], rows))
        what = "busy session" if args.busy else "session with work"
        plural = "" if len(rows) == 1 else "s"
        what = what.replace("session", f"session{plural}")
        print(f"\n{len(rows)} {what}" + (f" of tenant {args.tenant}" if args.tenant else ""))
    return {"sessions": sessions}


def _session(api: OperatorApi, args: Any) -> object:
    tenant, session_id = _session_ref(args.session)
    view = api.session(tenant, session_id)
    if not args.json:
        holder = view.get("holder")
        run = view.get("active_run")
        queued = view.get("queued") or []
        print(
            fields(
                [
                    ("session", f"{tenant}/{view.get('session_id', session_id)}"),
                    ("state", view.get("state")),
                    ("holder", _holder(holder) if holder else None),
                    ("active run", _run_line(run) if run else None),
                    ("queue", f"{len(queued)}: {', '.join(queued)}" if queued else None),
                    ("generation", view.get("generation")),
                    ("last error", view.get("last_error")),
                ]
            )
        )
        runs = view.get("runs") or []
        if runs:
            print()
            print(
                table(
                    ["RUN", "STATUS", "AGENT", "CREATED", "FINISHED", "REASON"],
                    [
                        [
                            r.get("run_id"),
                            r.get("status"),
                            r.get("agent_id"),
                            r.get("created_at"),
                            r.get("finished_at"),
                            r.get("reason"),
                        ]
                        for r in runs
                    ],
                )
            )
    return view


def _holder(holder: dict[str, Any]) -> str:
    left = duration(holder.get("lease_expires_in_ms")) or "?"
    since = holder.get("held_since")
    return f"{holder.get('worker')} (fence {holder.get('fence')}, lease {left} left" + (
        f", since {since})" if since else ")"
    )


def _run_line(run: dict[str, Any]) -> str:
    agent = f", agent {run['agent_id']}" if run.get("agent_id") else ""
    started = f", started {run['started_at']}" if run.get("started_at") else ""
    return f"{run.get('run_id')} {run.get('status')}{agent}{started}"


def _stop(api: OperatorApi, args: Any) -> object:
    tenant, session_id = _session_ref(args.session)
    answer = api.stop(tenant, session_id)
    if not args.json:
        cancelled = answer.get("cancelled") or []
        print(f"stopped {tenant}/{session_id}; ended: {', '.join(cancelled) or 'nothing'}")
    return answer


def _reset(api: OperatorApi, args: Any) -> object:
    tenant, session_id = _session_ref(args.session)
    answer = api.reset(tenant, session_id)
    if not args.json:
        cancelled = answer.get("cancelled") or []
        print(
            f"reset {tenant}/{session_id} (generation {answer.get('generation')}); "
            f"ended: {', '.join(cancelled) or 'nothing'}"
        )
    return answer


def _cancel(api: OperatorApi, args: Any) -> object:
    run = api.cancel(args.run_id)
    if not args.json:
        print(f"run {run.get('run_id', args.run_id)}: {run.get('status')}")
    return run


def _agents(api: OperatorApi, args: Any) -> object:
    agents = api.agents()
    if not args.json:
        rows = [
            [
                a.get("agent_id"),
                a.get("subscription"),
                [_subscription(s) for s in a.get("subscriptions") or []],
                a.get("switch_count"),
                (a.get("last_switch") or {}).get("at")
                if isinstance(a.get("last_switch"), dict)
                else a.get("last_switch"),
            ]
            for a in agents
        ]
        print(table(["AGENT", "SUBSCRIPTION", "SUBSCRIPTIONS", "SWITCHES", "LAST SWITCH"], rows))
    return {"agents": agents}


def _subscription(sub: dict[str, Any]) -> str:
    state = sub.get("state") or "?"
    retry = sub.get("retry_in")
    shown = f"{sub.get('id')}{'*' if sub.get('assigned') else ''} {state}"
    return f"{shown} {retry:g}s" if isinstance(retry, int | float) else shown


def _workers(api: OperatorApi, args: Any) -> object:
    workers = api.workers()
    if not args.json:
        rows = [
            [
                w.get("worker") or w.get("worker_id"),
                w.get("host"),
                w.get("pid"),
                w.get("started_at"),
                duration(w.get("seen_ms_ago")),
                w.get("runs", w.get("holding")),
                w.get("runs_finished"),
            ]
            for w in workers
        ]
        print(table(["WORKER", "HOST", "PID", "STARTED", "SEEN AGO", "RUNNING", "FINISHED"], rows))
    return {"workers": workers}
