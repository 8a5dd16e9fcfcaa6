"""One delivery, run as a child process (``python -m gpuwatchd.sinks.deliver``).

The daemon runs each webhook or Apprise delivery in its own process so that a
receiver that answers one byte at a time, or a blocking library call, can be
ended at a total deadline by killing the process: no thread is left behind.
The job comes on stdin as JSON (never on the command line, where ``ps`` would
show the URL's token):

- ``{"url": ..., "body": ..., "timeout": ...}``: POST the JSON ``body`` to the
  webhook. Success is a 2xx answer. Redirects are never followed: a 3xx is a failure.
- ``{"kind": "apprise", "url": ..., "title": ..., "body": ...}``: send through
  Apprise, imported here only, with its logging silenced (its messages can
  quote the URL). Success is Apprise reporting the notification sent.

Exit 0 on success. Otherwise exit 1 with one line on stderr that never
contains the URL or any part of it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from gpuwatchd import __version__


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


def post(url: str, body: bytes, timeout: float) -> str | None:
    """POST ``body`` (JSON) to ``url``; None when answered 2xx, else one line why."""
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json; charset=utf-8",
                 "User-Agent": f"gpuwatchd/{__version__}"},
    )
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(request, timeout=timeout) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return f"failed: {exc.reason}"
    except http.client.HTTPException as exc:
        return f"failed: malformed answer ({type(exc).__name__})"
    except (TimeoutError, OSError, ValueError) as exc:
        return f"failed: {exc or type(exc).__name__}"
    if not 200 <= status < 300:
        return f"answered HTTP {status}"
    return None


@contextlib.contextmanager
def _quiet_apprise() -> Iterator[Any]:
    """Apprise, with logging and warnings silenced while it runs: its log lines
    and warnings can quote a URL, token included."""
    import logging
    import warnings

    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import apprise

            yield apprise
    finally:
        logging.disable(before)


def apprise_understands(url: str) -> bool:
    """Whether Apprise can parse ``url`` (a known scheme, the parts it needs)."""
    with _quiet_apprise() as apprise:
        return bool(apprise.Apprise().add(url))


def send_apprise(url: str, title: str, body: str) -> str | None:
    """Send ``title`` and ``body`` to the Apprise ``url``; None when Apprise reports
    it sent, else one line why (without the URL: Apprise does not say more)."""
    with _quiet_apprise() as apprise:
        service = apprise.Apprise()
        if not service.add(url):
            return "is not a URL Apprise understands (or needs a module it lacks)"
        if not service.notify(title=title, body=body):
            return "not delivered (the service refused it or could not be reached)"
    return None


def main() -> int:
    try:
        job = json.loads(sys.stdin.buffer.read())
        if job.get("kind") == "apprise":
            error = send_apprise(str(job["url"]), str(job["title"]), str(job["body"]))
        else:
            error = post(str(job["url"]), str(job["body"]).encode(), float(job["timeout"]))
    except Exception as exc:  # one line, never a traceback (it could show the URL)
        error = f"failed: {type(exc).__name__}"
    if error is None:
        return 0
    sys.stderr.write(error + "\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
