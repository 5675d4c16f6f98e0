"""The operator commands' client: leasegate's /internal API, with the internal secret."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = 10.0
PAGE = 200
MAX_PAGES = 50


class CommandError(Exception):
    """What a command prints on stderr before it exits with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ApiError(CommandError):
    """The service answered with an error: its problem's status, title and detail."""

    def __init__(self, status: int, title: str, detail: str | None) -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status = status


class OperatorApi:
    def __init__(
        self, base_url: str, secret: str, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"X-Internal-Secret": secret},
            timeout=TIMEOUT,
            transport=transport,
        )
        self.base_url = base_url

    @classmethod
    def from_environment(cls, transport: httpx.BaseTransport | None = None) -> OperatorApi:
        secret = os.environ.get("LEASEGATE_INTERNAL_SECRET")
        if not secret:
            raise CommandError("LEASEGATE_INTERNAL_SECRET is not set (the service's own)", 2)
        return cls(os.environ.get("LEASEGATE_URL") or DEFAULT_URL, secret, transport)

    def close(self) -> None:
        self._client.close()

    def sessions(self, *, busy: bool, tenant: str | None) -> list[dict[str, Any]]:
        """Every listed session, following `next_cursor` (at most MAX_PAGES pages)."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"state": "busy" if busy else "all", "limit": PAGE}
        if tenant:
            params["tenant"] = tenant
        for _ in range(MAX_PAGES):
            page = self._call("GET", "/internal/sessions", params=params)
            found.extend(page["sessions"])
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return found

    def session(self, tenant: str, session_id: str) -> dict[str, Any]:
        return self._call("GET", f"/internal/sessions/{_seg(tenant)}/{_seg(session_id)}")

    def stop(self, tenant: str, session_id: str) -> dict[str, Any]:
        return self._call("POST", f"/internal/sessions/{_seg(tenant)}/{_seg(session_id)}/stop")

    def reset(self, tenant: str, session_id: str) -> dict[str, Any]:
        return self._call("POST", f"/internal/sessions/{_seg(tenant)}/{_seg(session_id)}/reset")

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/internal/runs/{_seg(run_id)}/cancel")

    def agents(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/internal/agents")["agents"])

    def workers(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/internal/workers")["workers"])

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CommandError(
                f"cannot reach leasegate at {self.base_url} ({type(exc).__name__}); "
                "is LEASEGATE_URL right?"
            ) from None
        if response.is_error:
            raise _api_error(response)
        try:
            body = response.json()
        except ValueError:
            raise CommandError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise CommandError(f"{method} {path}: unexpected answer")
        return body


def _seg(value: str) -> str:
    """One path segment: an id's `/` or `?` must not change the route."""
    return quote(value, safe="")


def _api_error(response: httpx.Response) -> ApiError:
    title, detail = response.reason_phrase, None
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        title = str(problem.get("title") or title)
        raw = problem.get("detail")
        detail = raw if isinstance(raw, str) else (str(raw) if raw is not None else None)
    return ApiError(response.status_code, title, detail)
