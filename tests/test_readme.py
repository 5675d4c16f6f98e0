"""README's shell examples run as written: each block that runs against the "Try it" server
runs on its own, in a fresh shell with nothing but PATH, against a live `leasegate serve`
started as that block's server says, and none is answered with an error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.redis.server import free_port
from tests.support.processes import service
from tests.support.servers import base_env, leasegate_command

pytestmark = pytest.mark.multiprocess

README = Path(__file__).resolve().parent.parent / "README.md"
DOCUMENTED = "http://127.0.0.1:8000"
TRY_IT_SECRET = "a-long-random-secret"


def shell_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def try_it_blocks() -> list[str]:
    """Client blocks for the "Try it" server: those that name its address, start no server
    and whose `B=` line names no other server in a comment."""
    return [
        block
        for block in shell_blocks()
        if DOCUMENTED in block
        and not block.startswith("# server")
        and not re.search(r"^B=\S+[ \t]+#", block, flags=re.MULTILINE)
        and "make run" not in block
    ]


def test_the_blocks_are_found() -> None:
    blocks = try_it_blocks()
    assert len(blocks) >= 5, blocks
    # Each sets what it uses: B before any use of $B.
    for block in shell_blocks():
        lines = block.splitlines()
        uses = [i for i, line in enumerate(lines) if "$B" in line]
        sets = [i for i, line in enumerate(lines) if line.startswith("B=")]
        if uses:
            assert sets and sets[0] < uses[0], block
    # The "Try it" server block is the one the test starts (open, with this secret).
    start = f"LEASEGATE_INTERNAL_SECRET={TRY_IT_SECRET} make run"
    [server] = [b for b in shell_blocks() if b.startswith("# server") and start in b]
    assert server.startswith("# server\nunset LEASEGATE_API_KEYS LEASEGATE_REQUIRE_AUTH"), server


def test_each_try_it_block_runs_on_its_own(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(
        LEASEGATE_DATA_DIR=str(tmp_path / "data"),
        LEASEGATE_INTERNAL_SECRET=TRY_IT_SECRET,
        LEASEGATE_LOG_LEVEL="WARNING",
    )
    command = leasegate_command("serve", "--port", str(port), "--workers", "2")
    shell_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    with service(command, env, tmp_path / "server", url):
        # Last first: a block that leans on one before it fails here.
        for block in reversed(try_it_blocks()):
            script = block.replace(DOCUMENTED, url)
            result = subprocess.run(
                ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=README.parent,
            )
            shown = (
                f"--- block:\n{block}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"
            )
            assert result.returncode == 0, shown
            assert "/problems/" not in result.stdout, shown
            assert result.stdout.strip(), shown
