"""The one readiness poll the demo, the bench, the chaos campaign and the tests share."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from patrol.waits import ExitedWaiting, wait_http


class _Page(BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        code = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"not yet" if code != 200 else b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page() -> Iterator[tuple[str, type[_Page]]]:
    handler = type("Page", (_Page,), {"answers": [503]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readyz", handler
    server.shutdown()
    server.server_close()


def test_waits_through_unready_answers_until_200(page: tuple[str, type[_Page]]) -> None:
    url, handler = page
    handler.answers = [503, 503, 200]
    assert wait_http(url, timeout=10, interval=0.01) > 0
    assert handler.answers == [200]  # both 503s were asked for and passed over


def test_a_timeout_says_what_the_page_last_answered(page: tuple[str, type[_Page]]) -> None:
    url, _ = page
    with pytest.raises(TimeoutError, match="HTTP 503: not yet"):
        wait_http(url, timeout=0.2, interval=0.01)


def test_a_process_that_exits_ends_the_wait_at_once(page: tuple[str, type[_Page]]) -> None:
    url, _ = page
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(ExitedWaiting, match="exited with 3"):
        wait_http(url, timeout=30, proc=proc)


def test_alive_turning_false_ends_the_wait_at_once(page: tuple[str, type[_Page]]) -> None:
    url, _ = page
    answers = iter([True, False])  # alive for the first poll, gone before the second
    with pytest.raises(ExitedWaiting, match="HTTP 503"):
        wait_http(url, timeout=30, alive=lambda: next(answers), interval=0.01)
