"""Operations: liveness, readiness, metrics, the OpenAPI document, and the demo page."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from server import metrics
from server.errors import NotAuthenticated
from server.services import services
from server.static import STATIC_DIR


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    app = services(request)
    if app.runner.draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "5"})
    if not await app.db.ping():
        return JSONResponse(
            {"status": "database unavailable"}, status_code=503, headers={"Retry-After": "2"}
        )
    if not app.worker.heartbeat.trusted:
        # It takes no answer now (the reservation would be 503 worker_unavailable): it is
        # registering, or renewing a heartbeat it could not renew for a lease.
        return JSONResponse(
            {"status": "heartbeat not renewed"}, status_code=503, headers={"Retry-After": "1"}
        )
    return JSONResponse({"status": "ready"})


def _require_ops_token(request: Request) -> None:
    """With ``OPS_TOKEN`` set, the metrics and the API's description are for whoever holds it
    (a Prometheus scraper, an operator): they tell anyone else how busy the service is, and
    what it runs. /healthz and /readyz stay open, for load balancers."""
    expected = services(request).settings.ops_token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise NotAuthenticated("this endpoint needs the operator's token (Authorization: Bearer)")
    if not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise NotAuthenticated("the operator's token is not this one", code="invalid_token")


async def metrics_text(request: Request) -> Response:
    _require_ops_token(request)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


async def openapi(request: Request) -> Response:
    _require_ops_token(request)
    document = request.app.state.openapi
    return JSONResponse(document)


async def index(_request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", metrics_text, methods=["GET"]),
    Route("/", index, methods=["GET"]),
]
