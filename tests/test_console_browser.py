"""The console in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright, against a real 2-worker server. An operator signs in, sees a slow session busy
with its holder, stops it (accepting the confirmation) and sees it idle.

`make test` installs chromium where apt-get works; elsewhere the browser test is skipped
and says so. Set LEASEGATE_CONSOLE_SCREENSHOTS to a folder to keep the screenshots
(docs/console*.png were taken so)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.redis.server import RedisServer, free_port
from tests.support.servers import (
    ACME,
    API_KEYS,
    GLOBEX,
    INTERNAL,
    INTERNAL_SECRET,
    base_env,
    server_process,
    uvicorn_command,
    write_agents_file,
)
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.multiprocess

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SESSION = "console-demo"


class Server:
    def __init__(self, url: str, pid: int, log: Path) -> None:
        self.url, self.pid, self.log = url, pid, log

    def worker_pids(self) -> set[int]:
        """uvicorn's worker processes (its other child is multiprocessing's tracker)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return {
            int(pid)
            for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        }


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console")
    env = base_env(
        LEASEGATE_AGENTS_FILE=str(write_agents_file(folder)),
        LEASEGATE_REDIS_URL=redis_server.url,
        LEASEGATE_LEASE_TTL_SECONDS="3",
        LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
        LEASEGATE_LOG_LEVEL="INFO",
        LEASEGATE_API_KEYS=json.dumps(API_KEYS),
        LEASEGATE_INTERNAL_SECRET=INTERNAL_SECRET,
        LEASEGATE_CONSOLE_INTERVAL_SECONDS="0.5",
        LEASEGATE_WORKER_HEARTBEAT_SECONDS="0.5",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    with server_process(uvicorn_command(port, 2), env, log, url) as process:
        running = Server(url, process.pid, log)
        wait_until_sync(lambda: len(running.worker_pids()) == 2, 10, "two workers")
        yield running


def first_snapshot(server: Server, **params: str) -> dict[str, Any]:
    """The first snapshot of the console stream, opened with a token as the page does."""
    token = httpx.post(f"{server.url}/internal/console/token", headers=INTERNAL).json()["token"]
    url = f"{server.url}/internal/console/stream"
    with httpx.stream("GET", url, params={"token": token, **params}, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "snapshot":
                snapshot: dict[str, Any] = json.loads(line.partition(":")[2])
                return snapshot
    raise AssertionError("the stream ended without a snapshot")


def test_the_stream_shows_every_worker_of_the_server(server: Server) -> None:
    def both_listed() -> bool:
        listed = {w["pid"] for w in first_snapshot(server)["workers"]}
        return server.worker_pids() <= listed

    wait_until_sync(both_listed, 10, "both workers in the console's snapshot")
    workers = httpx.get(f"{server.url}/internal/workers", headers=INTERNAL).json()["workers"]
    assert server.worker_pids() <= {w["pid"] for w in workers}


async def some_history(server: Server, seconds: float) -> None:
    """Runs that end, a subscription switch, a long job: something for every panel. For
    the screenshots in docs/, `seconds` of steady traffic too, so the chart has a shape."""
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each: both workers
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=fresh) as http:

        async def post(tenant: str, session: str, metadata: dict[str, Any]) -> None:
            headers = ACME if tenant == "acme" else GLOBEX
            body = {"text": "hello", "metadata": metadata}
            answer = await http.post(f"/v1/sessions/{session}/messages", json=body, headers=headers)
            assert answer.status_code == 202, answer.text

        await asyncio.gather(
            *(post(t, f"{t}-chat-{i}", {}) for i in range(4) for t in ("acme", "globex"))
        )
        failure = {"subscription_id": "sub-a", "kind": "rate_limit", "cooldown_seconds": 600}
        switched = await http.post(
            "/internal/agents/helper/subscription-failures", json=failure, headers=INTERNAL
        )
        assert switched.status_code == 200, switched.text
        await post("globex", "globex-batch", {"delay_ms": 60_000})
        deadline = time.monotonic() + seconds
        rng = random.Random(7)
        while time.monotonic() < deadline:  # a load generator's pace, nothing waits on it
            busy = 0.5 + 0.5 * math.sin(time.monotonic() / 6)
            tenant = rng.choice(("acme", "globex"))
            delay = {"delay_ms": rng.randint(200, 1500)}
            await post(tenant, f"{tenant}-chat-{rng.randrange(6)}", delay)
            await asyncio.sleep(0.05 + 0.3 * (1 - busy))


@pytest.mark.skipif(
    not HAVE_CHROMIUM,
    reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package "
    "(`make test` does where apt-get works) to run the console's browser test",
)
async def test_an_operator_sees_a_busy_session_and_stops_it(server: Server, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    expect = playwright.expect
    keep = os.environ.get("LEASEGATE_CONSOLE_SCREENSHOTS")
    shots = Path(keep or tmp_path)
    dialogs: list[str] = []

    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()

            async def accept(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.accept()

            page.on("dialog", accept)
            await page.goto(f"{server.url}/console")
            await page.fill("#secret", INTERNAL_SECRET)
            await page.click("#login-form button")
            await expect(page.locator("#connection")).to_have_text("live")
            await some_history(server, 60 if keep else 0)
            for pid in server.worker_pids():
                worker_row = page.locator("#workers tbody tr", has_text=f":{pid}")
                await expect(worker_row).to_have_count(1)

            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                slow = await http.post(
                    f"/v1/sessions/{SESSION}/messages",
                    json={"text": "a long answer", "metadata": {"delay_ms": 60_000}},
                    headers=ACME,
                )
                queued = await http.post(
                    f"/v1/sessions/{SESSION}/messages", json={"text": "and then"}, headers=ACME
                )
                assert slow.status_code == queued.status_code == 202
                run_id, queued_id = slow.json()["run_id"], queued.json()["run_id"]

                row = page.locator(f'#sessions tr[data-session="acme/{SESSION}"]')
                await expect(row).to_have_count(1)
                view = (await http.get(f"/v1/sessions/{SESSION}", headers=ACME)).json()
                holder = view["holder"]["worker"]
                assert int(holder.rpartition(":")[2]) in server.worker_pids()
                await expect(row.locator(".holder")).to_have_text(holder)
                await expect(row).to_contain_text(run_id[-12:])
                await expect(page.locator("#agents")).to_contain_text("cooling")
                await page.mouse.move(0, 0)
                await page.screenshot(path=str(shots / "console.png"), full_page=True)

                await row.click()  # the session in detail
                await expect(page.locator("#detail-state")).to_have_text("busy")
                await expect(page.locator("#detail-holder")).to_contain_text(holder)

                await row.locator("button.stop").click()  # confirmed in `accept`
                await expect(row).to_have_count(0)
                await expect(page.locator("#detail-state")).to_have_text("idle")
                await expect(page.locator("#log")).to_contain_text(f"stop acme/{SESSION}")
                assert dialogs and f"Stop session acme/{SESSION}?" in dialogs[0]
                await expect(page.locator("#runs tbody")).to_contain_text(run_id[-12:])
                await page.mouse.move(0, 0)
                await page.screenshot(path=str(shots / "console-stopped.png"), full_page=True)

                other_tenant = page.locator('#sessions tr[data-session="globex/globex-batch"]')
                await expect(other_tenant).to_have_count(1)
                await page.locator("#tenant").fill("acme")  # the tenant filter
                await page.locator("#tenant").dispatch_event("change")
                await expect(page.locator('#sessions tr[data-session^="globex/"]')).to_have_count(0)

                ended = (await http.get(f"/v1/runs/{run_id}", headers=ACME)).json()
                assert ended["status"] == "cancelled" and ended["reason"] == "stop"
                dropped = (await http.get(f"/v1/runs/{queued_id}", headers=ACME)).json()
                assert dropped["status"] == "cancelled"
        finally:
            await browser.close()

    logged = re.compile(rf"operator stopped session acme/{SESSION} \(request [0-9a-f]{{32}}\)")
    wait_until_sync(lambda: bool(logged.search(server.log.read_text())), 5, "the stop logged")
