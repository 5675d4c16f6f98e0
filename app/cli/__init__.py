"""The `leasegate` command: `serve` runs the service; `sessions`, `session`, `stop`,
`reset`, `cancel`, `agents` and `workers` ask a running one, over its HTTP API.

Exit codes: 0 done; 1 the service answered with an error or could not be reached (the
problem's title and detail on stderr); 2 a usage error (argparse's own code); and for
`serve` the codes in `app.cli.serve`.
"""

from __future__ import annotations

import argparse
import sys

from app.cli import operator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leasegate",
        description="Run leasegate, or look at and act on a running one.",
        epilog="Operator commands read LEASEGATE_URL (default http://127.0.0.1:8000) and "
        "LEASEGATE_INTERNAL_SECRET from the environment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=2)
    serve.set_defaults(handler=_serve)
    operator.add_parsers(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from app.cli.serve import run_serve  # the whole service: not for the operator commands

    return run_serve(args.host, args.port, args.workers)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))
