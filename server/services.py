"""What the handlers work with, built once per worker by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from server.auth import Authenticator
from server.config import Settings
from server.db import Database
from server.runner import Runner
from server.store import Store
from server.worker import Worker


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    store: Store
    worker: Worker
    auth: Authenticator

    @property
    def runner(self) -> Runner:
        return self.worker.runner


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
