"""The line that tells a person where the server is, printed once the server answers.

``uvicorn.run`` does not return while it serves, and with ``WORKERS`` > 1 the workers are other
processes that each start on their own. So the process that calls it polls ``/healthz`` from a
thread and prints the line at the first answer: a URL that is opened at once works, and it is
printed once per server, whatever the number of workers.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

POLL_SECONDS = 0.05


def local_address(host: str) -> str:
    """How this machine reaches a server bound to ``host`` (a wildcard address means loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def when_ready(host: str, port: int, text: str) -> threading.Thread | None:
    """Print ``text`` once ``/healthz`` answers 200 on ``host:port``, polled from a daemon thread
    (a server that never comes up leaves nothing behind).

    Call it before the server starts: when something already listens on the port, its answer
    would say nothing about this server (which will fail to bind and say so), so nothing is
    printed then and None is returned."""
    address = local_address(host)
    if _listening(address, port):
        return None
    thread = threading.Thread(target=_print_when_ready, args=(address, port, text), daemon=True)
    thread.start()
    return thread


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


def _print_when_ready(address: str, port: int, text: str) -> None:
    while not _healthy(address, port):
        time.sleep(POLL_SECONDS)
    print(text, flush=True)


def _healthy(address: str, port: int) -> bool:
    # http.client rather than httpx: no proxy from the environment, and no log line per poll.
    connection = http.client.HTTPConnection(address, port, timeout=2.0)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
