"""The line that tells a person where the server is, printed once the server answers.

``uvicorn.run`` does not return while it serves, and with ``WORKERS`` > 1 the workers are other
processes that each start on their own. So the process that calls it polls ``/healthz`` from a
thread and prints the line at the first answer: a URL that is opened at once works, and it is
printed once per server, whatever the number of workers.
"""

from __future__ import annotations

import threading
import time

import httpx

POLL_SECONDS = 0.05


def local_url(host: str, port: int) -> str:
    """How this machine reaches a server bound to ``host`` (a wildcard address means loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def when_ready(url: str, text: str) -> threading.Thread:
    """Print ``text`` once ``{url}/healthz`` answers 200; polls from a daemon thread, so a server
    that never comes up leaves nothing behind."""
    thread = threading.Thread(target=_print_when_ready, args=(url, text), daemon=True)
    thread.start()
    return thread


def _print_when_ready(url: str, text: str) -> None:
    # trust_env=False: a proxy from the environment must not stand between us and loopback.
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while not _answers(client, f"{url}/healthz"):
            time.sleep(POLL_SECONDS)
    print(text, flush=True)


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False
