"""Projects: the conversations a user owns."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import NotFound
from server.models import CreateProject, ProjectList, RenameProject
from server.parsing import path_uuid, query_int, read_json
from server.routes.respond import json_response
from server.services import services


async def create_project(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    body = await read_json(request, CreateProject, max_bytes=app.settings.max_body_bytes)
    project = await app.store.create_project(user.id, body.title)
    return json_response(project.model_dump_json(), 201)


async def list_projects(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    limit = query_int(request, "limit", default=100, low=1, high=1000)
    assert limit is not None
    projects = await app.store.list_projects(user.id, limit)
    return json_response(ProjectList(projects=projects).model_dump_json())


async def get_project(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id = path_uuid(request, "project_id", "project")
    project = await app.store.get_project(project_id, user.id)
    if project is None:
        raise NotFound(f"no project with id '{project_id}'")
    return json_response(project.model_dump_json())


async def rename_project(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id = path_uuid(request, "project_id", "project")
    body = await read_json(request, RenameProject, max_bytes=app.settings.max_body_bytes)
    project = await app.store.rename_project(project_id, user.id, body.title)
    if project is None:
        raise NotFound(f"no project with id '{project_id}'")
    return json_response(project.model_dump_json())


async def delete_project(request: Request) -> Response:
    """Delete a project: its running answers end ``cancelled``, then everything of it goes."""
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id = path_uuid(request, "project_id", "project")
    if not await app.runner.delete_project(project_id, user.id):
        raise NotFound(f"no project with id '{project_id}'")
    return Response(status_code=204)


routes = [
    Route("/api/projects", create_project, methods=["POST"]),
    Route("/api/projects", list_projects, methods=["GET"]),
    Route("/api/projects/{project_id}", get_project, methods=["GET"]),
    Route("/api/projects/{project_id}", rename_project, methods=["PATCH"]),
    Route("/api/projects/{project_id}", delete_project, methods=["DELETE"]),
]
