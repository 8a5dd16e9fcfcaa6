"""The short, human message sent through Apprise for a record (pure, no I/O).

:func:`human_message` gives a title such as ``gpuwatchd: restarted KonomiTV
(persistence_off)`` and a body of three short lines: the cause, the evidence in
one line, and what the operator should do for good. The command and the JSON
webhook keep the whole record; this is for a phone's lock screen.
"""

from __future__ import annotations

from gpuwatchd.model.records import ADVICE, Record

#: What each cause means, in a sentence.
CAUSE_TEXT = {
    "persistence_off": "GPU persistence mode was off and the NVIDIA driver idled, "
    "so NVML stopped working inside the container.",
    "device_access_lost": "A systemd daemon-reload revoked the container's GPU device "
    "access (Docker's systemd cgroup driver).",
    "unknown": "NVML failed inside the container; the cause could not be told apart.",
    **ADVICE,
}

#: What to do so that the cause does not come back.
FOR_GOOD = {
    "persistence_off": "Keep persistence mode on from boot: run nvidia-persistenced with "
    "--persistence-mode (packaging/install.sh --with-host-fixes installs that).",
    "device_access_lost": "Stop daemon-reloads from revoking GPUs: "
    "`sudo nvidia-ctk system create-dev-char-symlinks --create-all`, or give Docker "
    "the cgroupfs driver; `gpuwatchd diagnose {container}` shows the commands.",
    "unknown": "Run `gpuwatchd diagnose {container}` to name the cause and its fix.",
    **ADVICE,
}


def _text(value: object, default: str = "?") -> str:
    if isinstance(value, float):
        return f"{value:g}"  # 3600.0 -> 3600
    return default if value is None else str(value)


def _cause(record: Record) -> str:
    return _text(record.get("cause"), "unknown")


def _plural(n: object, one: str) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {one}s"


def _evidence(record: Record) -> str:
    """The record's facts in one line (only those it carries)."""
    parts = []
    confidence = record.get("confidence")
    if confidence is not None:
        parts.append(f"cause {confidence}")
    attempt, most = record.get("attempt"), record.get("max_restarts")
    if attempt is not None:
        parts.append(f"restart {attempt} of {_text(most)} in the window")
    if record.event == "remediation_gave_up":
        parts.append(f"{_plural(_text(record.get('count')), 'restart')} within "
                     f"{_text(record.get('window'))}s did not cure it")
    result = record.get("result")
    if result is not None:
        parts.append(f"result {result}")
    elapsed = record.get("elapsed")
    if elapsed is not None:
        parts.append(f"after {elapsed}s")
    matches = record.get("matches")
    if isinstance(matches, int) and matches:
        parts.append(f"{_plural(matches, 'matching log line')}")
    error = record.get("error")
    if error is not None:
        parts.append(f"error: {error}")
    if record.get("dry_run") is True:
        parts.append("dry run: nothing was changed")
    return "; ".join(parts) if parts else record.message


def _for_good(record: Record, container: str) -> str:
    cause = _cause(record)
    text = FOR_GOOD.get(cause, FOR_GOOD["unknown"]).format(container=container)
    if record.event == "remediation_gave_up":
        return f"{text} Then `gpuwatchd reset {container}` re-arms restarts."
    return text


def human_message(record: Record) -> tuple[str, str]:
    """``(title, body)`` for ``record``: short, for people, with nothing secret in it.

    ``container_restarted`` and ``remediation_gave_up`` name the cause, the evidence
    and the lasting fix; ``remediation_skipped`` adds the record's advice; any other
    event gets its record message as the body.
    """
    container = _text(record.get("container"), "the container")
    cause = _cause(record)
    event = record.event
    if event == "container_restarted":
        verb = "would restart" if record.get("dry_run") is True else "restarted"
        title = f"{verb} {container} ({cause})"
    elif event == "remediation_gave_up":
        title = f"gave up on {container} ({cause})"
    elif event == "remediation_skipped":
        title = f"not restarting {container} ({_text(record.get('reason'))})"
    elif event == "remediation_failed":
        title = f"restart of {container} failed ({_text(record.get('result'))})"
    elif event == "container_recovered":
        title = f"{container} recovered ({_text(record.get('result'))})"
    else:
        return f"gpuwatchd: {event.replace('_', ' ')}", record.message
    lines = [CAUSE_TEXT.get(cause, CAUSE_TEXT["unknown"]), f"Evidence: {_evidence(record)}."]
    if event == "remediation_skipped":
        advice = record.get("advice")
        if advice:
            lines.append(str(advice))
    elif event != "container_recovered" or cause != "unknown":
        lines.append(f"For good: {_for_good(record, container)}")
    return f"gpuwatchd: {title}", "\n".join(lines)


__all__ = ["human_message"]
