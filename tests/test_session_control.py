"""A session that explains itself: dispositions, the holder, the queue, the last error, why
each run was cancelled; stop that keeps the queue, bulk cancel, erasure, and a waiting
client that goes away."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.api import post, run_of, wait_status
from tests.support.servers import Servers, client, fleet_client
from tests.support.waiting import wait_until

pytestmark = pytest.mark.multiprocess

SLOW = {"delay_ms": 60_000}


@pytest.fixture
async def api(fleet: Servers) -> AsyncIterator[httpx.AsyncClient]:
    """Requests to a 4-worker server and a second process in turn, on one Redis server and
    on the cluster: whichever worker admits a message, another holds its session."""
    async with fleet_client(fleet) as http:
        yield http


async def test_every_answer_says_what_admission_did(api: httpx.AsyncClient) -> None:
    first = (await post(api, "s", "one", metadata=SLOW)).json()
    second = (await post(api, "s", "two")).json()
    cutting = (await post(api, "s", "now", busy_policy="interrupt")).json()
    assert first["disposition"] == "started" and second["disposition"] == "queued"
    assert cutting["disposition"] == "interrupted"
    assert cutting["interrupted_run_id"] == first["run_id"]
    interrupted = await wait_status(api, first["run_id"], "interrupted")
    assert interrupted["reason"] == f"interrupted_by:{cutting['run_id']}"
    done = await wait_status(api, cutting["run_id"], "completed")
    assert done["disposition"] == "interrupted" and done["busy_policy"] == "interrupt"
    assert (await wait_status(api, second["run_id"], "completed"))["disposition"] == "queued"


async def test_a_busy_session_shows_its_holder_queue_and_last_error(api: httpx.AsyncClient) -> None:
    failed = await post(api, "s", "x", wait=5, metadata={"fail": "error"})
    assert failed.json()["status"] == "failed"
    active = (await post(api, "s", "long", metadata=SLOW)).json()
    queued = (await post(api, "s", "later", busy_policy="enqueue")).json()
    view = (await api.get("/v1/sessions/s")).json()
    assert view["state"] == "busy" and view["active_run"]["run_id"] == active["run_id"]
    assert view["active_run"]["started_at"] is not None
    holder = view["holder"]
    assert holder["worker"] and holder["fence"] == view["active_run"]["fence"]
    assert 0 < holder["lease_expires_in_ms"] <= 3000 and holder["held_since"]
    assert view["queue"] == [
        {
            "run_id": queued["run_id"],
            "busy_policy": "enqueue",
            "disposition": "queued",
            "created_at": (await run_of(api, queued["run_id"]))["created_at"],
        }
    ]
    assert "fail" in view["last_error"] and view["default_busy_policy"] == "enqueue"
    await api.post("/v1/sessions/s/stop")


async def test_stop_can_keep_the_queue(api: httpx.AsyncClient) -> None:
    active = (await post(api, "s", "long", metadata=SLOW)).json()
    queued = [(await post(api, "s", f"q{i}")).json()["run_id"] for i in range(2)]
    stopped = (await api.post("/v1/sessions/s/stop", params={"queued": "keep"})).json()
    assert stopped["cancelled"] == [active["run_id"]] and stopped["kept"] == queued
    ended = await wait_status(api, active["run_id"], "cancelled")
    assert ended["reason"] == "stop"
    for run_id in queued:
        assert (await wait_status(api, run_id, "completed"))["status"] == "completed"


async def test_stop_cancels_the_queue_and_says_why(api: httpx.AsyncClient) -> None:
    active = (await post(api, "s", "long", metadata=SLOW)).json()
    queued = (await post(api, "s", "q")).json()
    stopped = (await api.post("/v1/sessions/s/stop")).json()
    assert stopped["cancelled"] == [queued["run_id"], active["run_id"]] and stopped["kept"] == []
    assert (await run_of(api, queued["run_id"]))["reason"] == "stop"
    assert (await wait_status(api, active["run_id"], "cancelled"))["reason"] == "stop"


async def test_bulk_cancel_answers_per_run(api: httpx.AsyncClient) -> None:
    done = (await post(api, "s", "done", wait=5)).json()
    active = (await post(api, "s", "long", metadata=SLOW)).json()
    queued = (await post(api, "s", "q")).json()
    missing = done["run_id"][:-4] + "ffff"
    answer = await api.post(
        "/v1/runs/cancel",
        json={"run_ids": [queued["run_id"], active["run_id"], done["run_id"], missing]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == [
        {"run_id": queued["run_id"], "outcome": "cancelled"},
        {"run_id": active["run_id"], "outcome": "cancel_requested"},
        {"run_id": done["run_id"], "outcome": "already_ended", "status": "completed"},
        {"run_id": missing, "outcome": "not_found"},
    ]
    assert (await wait_status(api, active["run_id"], "cancelled"))["reason"] == "api"
    more = [(await post(api, "t", f"m{i}", metadata=SLOW)).json()["run_id"] for i in range(3)]
    by_session = await api.post("/v1/runs/cancel", json={"session_id": "t", "status": "queued"})
    assert [r["run_id"] for r in by_session.json()["results"]] == more[1:]
    assert (await run_of(api, more[0]))["status"] == "running"
    bad = await api.post("/v1/runs/cancel", json={"run_ids": ["x"], "session_id": "t"})
    assert bad.status_code == 422 and bad.json()["status"] == 422
    await api.post("/v1/sessions/t/stop")


async def test_a_deleted_session_is_gone_and_its_id_starts_afresh(api: httpx.AsyncClient) -> None:
    first = (await post(api, "s", "hello", wait=5)).json()
    active = (await post(api, "s", "long", metadata=SLOW)).json()
    deleted = await api.delete("/v1/sessions/s")
    assert deleted.status_code == 200 and deleted.json()["cancelled"] == [active["run_id"]]
    for path in ("/v1/sessions/s", "/v1/sessions/s/transcript", "/v1/sessions/s/runs"):
        assert (await api.get(path)).status_code == 404
    assert (await api.get(f"/v1/runs/{first['run_id']}")).status_code == 404
    assert (await api.delete("/v1/sessions/s")).status_code == 404
    again = (await post(api, "s", "fresh start", wait=5)).json()
    assert again["status"] == "completed" and again["generation"] == 1
    turns = (await api.get("/v1/sessions/s/transcript")).json()["turns"]
    assert [t["text"] for t in turns] == ["fresh start", "echo: fresh start"]


async def test_a_waiting_client_that_goes_away_cancels_its_run_when_asked(
    servers: Servers,
) -> None:
    session = f"dc-{uuid.uuid4().hex[:8]}"
    async with client(servers.four_workers) as http:
        http.timeout = httpx.Timeout(30, read=0.5)  # the client gives up: its connection closes
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                f"/v1/sessions/{session}/messages",
                params={"wait": 30, "on_disconnect": "cancel"},
                json={"text": "long", "metadata": SLOW},
            )
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                f"/v1/sessions/{session}-kept/messages",
                params={"wait": 30},
                json={"text": "long", "metadata": SLOW},
            )
    async with client(servers.other_process) as http:

        async def runs_of(name: str) -> list[dict[str, object]]:
            runs: list[dict[str, object]] = (await http.get(f"/v1/sessions/{name}/runs")).json()[
                "runs"
            ]
            return runs

        async def cancelled() -> bool:
            runs = await runs_of(session)
            return bool(runs) and runs[0]["status"] == "cancelled"

        await wait_until(cancelled, 10, "the run of the client that went away to be cancelled")
        assert (await runs_of(session))[0]["reason"] == "client_disconnected"
        assert (await runs_of(f"{session}-kept"))[0]["status"] == "running"  # the default
        await http.post(f"/v1/sessions/{session}-kept/stop")


async def test_latest_supersedes_every_queued_run(api: httpx.AsyncClient) -> None:
    active = (await post(api, "s", "long", metadata={"delay_ms": 600})).json()
    queued = [(await post(api, "s", f"q{i}")).json()["run_id"] for i in range(10)]
    latest = (await post(api, "s", "the latest", busy_policy="latest")).json()
    assert latest["disposition"] == "queued" and latest["superseded_run_ids"] == queued
    for run_id in queued:
        run = await run_of(api, run_id)
        assert run["status"] == "superseded"
        assert run["reason"] == f"superseded_by:{latest['run_id']}"
    assert (await wait_status(api, active["run_id"], "completed"))["status"] == "completed"
    done = await wait_status(api, latest["run_id"], "completed")
    assert done["superseded_run_ids"] == queued
    turns = (await api.get("/v1/sessions/s/transcript")).json()["turns"]
    assert [t["text"] for t in turns if t["role"] == "user"] == ["long", "the latest"]


async def test_rollback_stops_the_run_and_keeps_its_turns_out(api: httpx.AsyncClient) -> None:
    await post(api, "s", "kept", wait=5)
    active = (await post(api, "s", "regretted", metadata=SLOW)).json()
    answer = (await post(api, "s", "instead", busy_policy="rollback")).json()
    assert answer["disposition"] == "rolled_back" and "interrupted_run_id" not in answer
    assert answer["rolled_back_run_id"] == active["run_id"]  # the 202 names what it did
    back = await wait_status(api, answer["run_id"], "completed")
    assert back["status"] == "completed" and back["disposition"] == "rolled_back"
    assert back["rolled_back_run_id"] == active["run_id"]
    rolled = await run_of(api, active["run_id"])  # its record stays, for audit
    assert rolled["status"] == "rolled_back"
    assert rolled["reason"] == f"rolled_back_by:{back['run_id']}"
    turns = (await api.get("/v1/sessions/s/transcript")).json()["turns"]
    assert [t["text"] for t in turns if t["role"] == "user"] == ["kept", "instead"]


async def test_a_session_default_policy_applies_to_messages_naming_none(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.patch("/v1/sessions/new", json={"busy_policy": "reject"})).status_code == 404
    await post(api, "s", "create", wait=5)
    patched = await api.patch("/v1/sessions/s", json={"busy_policy": "reject"})
    assert patched.status_code == 200 and patched.json()["default_busy_policy"] == "reject"
    await post(api, "s", "long", metadata=SLOW)
    refused = await post(api, "s", "no policy named")
    assert refused.status_code == 409 and refused.json()["status"] == 409
    named = await post(api, "s", "named", busy_policy="enqueue")
    assert named.status_code == 202 and named.json()["disposition"] == "queued"
    bad = await api.patch("/v1/sessions/s", json={"busy_policy": "sometimes"})
    assert bad.status_code == 422
    await api.post("/v1/sessions/s/stop")
