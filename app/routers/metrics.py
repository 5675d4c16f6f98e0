"""Prometheus metrics of the whole server (every worker, in multiprocess mode)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import ResourcesDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Every worker's metrics, in the Prometheus text format.",
    response_class=PlainTextResponse,
)
async def metrics(resources: ResourcesDep) -> Response:
    return Response(resources.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
