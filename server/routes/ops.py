"""Operations: liveness, readiness, and the demo page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from server import metrics
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
    return JSONResponse({"status": "ready"})


async def metrics_text(_request: Request) -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


async def openapi(request: Request) -> Response:
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
