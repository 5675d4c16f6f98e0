"""The console page and its assets, shipped in the package (app/console/static).

The page itself holds nothing secret: it asks for the internal secret, keeps it in the
tab's session storage, and reads everything through the /internal endpoints. Its
Content-Security-Policy allows only this origin: no inline script, no CDN.
"""

from __future__ import annotations

from importlib import resources as package_files
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response

from app.errors import EndpointDisabledError

router = APIRouter(tags=["console"], include_in_schema=False)

ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return package_files.files("app.console").joinpath("static", name).read_bytes()


@router.get("/console")
async def console_page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/console/{asset}")
async def console_asset(asset: Literal["console.js", "console.css"]) -> Response:
    if asset not in ASSETS:
        raise EndpointDisabledError(asset)
    return Response(_read(asset), media_type=ASSETS[asset], headers=HEADERS)
