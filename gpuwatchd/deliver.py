"""The webhook POST, run as a child process (``python -m gpuwatchd.deliver``).

The daemon runs each webhook delivery in its own process so that a receiver
that answers one byte at a time, or a blocking library call, can be ended at a
total deadline by killing the process: no thread is left behind. The job comes
on stdin as JSON ``{"url": ..., "body": ...}`` (never on the command line,
where ``ps`` would show the URL's token). Exit 0: a 2xx answer. Otherwise exit
1 with one line on stderr that never contains the URL. Redirects are never
followed: a 3xx is a failure.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.request
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


def main() -> int:
    try:
        job = json.loads(sys.stdin.buffer.read())
        error = post(str(job["url"]), str(job["body"]).encode(), float(job["timeout"]))
    except Exception as exc:  # one line, never a traceback (it could show the URL)
        error = f"failed: {type(exc).__name__}"
    if error is None:
        return 0
    sys.stderr.write(error + "\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
