"""Probe-output classification: what one ``docker exec <c> nvidia-smi -L`` proved.

The classifier reads the printed text as well as the exit status, because the
text is the better evidence: nvidia-smi prints a fixed sentence for each NVML
failure, while its exit status depends on the version and on the probe command
an operator configured. The rules, first match wins:

1. ``exec_error`` (Docker could not start the process): ``not_running`` when the
   container is not running, paused, restarting or gone; otherwise
   ``probe_unavailable`` (executable missing, or any other exec failure: the
   probe could not run, which says nothing about NVML and is never a fault).
2. NVML failure text in the output, most specific first: ``version_mismatch``,
   ``gpu_lost``, ``driver_not_loaded``, then ``nvml_unknown_error`` for every other
   NVML failure sentence ("Failed to initialize NVML: ...", "Unable to determine
   the device handle ...", "No devices were found": a watched GPU container that
   sees no GPU has lost it). The text wins over the exit status and even over a
   timeout: once printed, it is the verdict.
3. On a non-zero exit, text saying the probe itself could not run (Docker's "OCI
   runtime exec failed", ``executable file not found``, ``command not found``,
   nvidia-smi's "couldn't find libnvidia-ml.so") → ``probe_unavailable``;
   Docker's "Container ... is not running" → ``not_running``.
4. ``timed_out`` → ``timeout``; an unknown exit status (None: the process had not
   finished) → ``timeout`` as well.
5. Exit 0 → ``ok``.
6. Exit statuses: 9 → ``driver_not_loaded``, 15 → ``gpu_lost``, 18 →
   ``version_mismatch`` (nvidia-smi returns the NVML error code);
   2 (invalid argument), 12 (NVML library missing), 126 and 127 (cannot execute,
   not found) → ``probe_unavailable``: the probe command is wrong for this
   container, and no restart can fix that; 137 and 143 (killed by SIGKILL or
   SIGTERM from outside: a container stop, the OOM killer, our own timeout kill)
   → ``timeout``: killed before it finished, so no verdict.
7. **Any other non-zero exit → ``nvml_unknown_error``.** The probe's contract is
   "exit 0 if and only if NVML works"; nvidia-smi's remaining statuses (3, 4, 6,
   10, 14, 255, a crash by SIGSEGV or SIGABRT) all mean NVML did not answer. A
   false alarm costs one bounded restart (cooldown, budget, give-up), while
   calling an NVML failure healthy leaves the GPU broken with nobody told.
"""

from __future__ import annotations

from gpuwatchd.model.vocabulary import ProbeResult

#: Only this much of the output is read: nvidia-smi -L prints a line per GPU,
#: and a runaway probe must cost no more than a normal one.
MAX_OUTPUT_CHARS = 64 * 1024

#: NVML failure sentences (lower case), most specific first.
_FAILURE_TEXT: tuple[tuple[ProbeResult, tuple[str, ...]], ...] = (
    (ProbeResult.VERSION_MISMATCH, ("driver/library version mismatch",)),
    (ProbeResult.GPU_LOST, ("gpu is lost", "fallen off the bus")),
    (
        ProbeResult.DRIVER_NOT_LOADED,
        (
            "couldn't communicate with the nvidia driver",
            "failed to initialize nvml: driver not loaded",
        ),
    ),
    (
        ProbeResult.NVML_UNKNOWN_ERROR,
        (
            "failed to initialize nvml",
            "unable to determine the device handle",
            "unable to determine the number of gpus",
            "no devices were found",
        ),
    ),
)

#: Text saying the probe could not run at all (lower case). Deliberately narrow:
#: a custom probe printing "/dev/nvidia0: Permission denied" is reporting the
#: very fault we look for, so bare errno texts are not on this list.
_UNAVAILABLE_TEXT = (
    "oci runtime exec failed",  # Docker: executable missing or not executable
    "executable file not found",
    "command not found",  # bash
    ": not found",  # sh: 1: nvidia-smi: not found
    "couldn't find libnvidia-ml.so",  # nvidia-smi without its library
)

#: Docker's words for "there is no running container to exec in" (lower case).
_NOT_RUNNING_TEXT = (
    "is not running",
    "is paused",
    "is restarting",
    "no such container",
    "is dead",
    "removal of container",
    "is marked for removal",
)

_EXIT_RESULTS = {
    2: ProbeResult.PROBE_UNAVAILABLE,  # nvidia-smi: invalid argument
    9: ProbeResult.DRIVER_NOT_LOADED,
    12: ProbeResult.PROBE_UNAVAILABLE,  # nvidia-smi: NVML library not found
    15: ProbeResult.GPU_LOST,
    18: ProbeResult.VERSION_MISMATCH,
    126: ProbeResult.PROBE_UNAVAILABLE,  # found but not executable
    127: ProbeResult.PROBE_UNAVAILABLE,  # not found
    137: ProbeResult.TIMEOUT,  # SIGKILL from outside: no verdict
    143: ProbeResult.TIMEOUT,  # SIGTERM from outside: no verdict
}


def _text(output: bytes | str) -> str:
    if isinstance(output, bytes):
        output = output[: MAX_OUTPUT_CHARS * 4].decode("utf-8", errors="replace")
    return output[:MAX_OUTPUT_CHARS]


def _failure_in(lowered: str) -> ProbeResult | None:
    for result, phrases in _FAILURE_TEXT:
        if any(phrase in lowered for phrase in phrases):
            return result
    return None


def _says_not_running(lowered: str) -> bool:
    return any(phrase in lowered for phrase in _NOT_RUNNING_TEXT)


def classify_probe(
    exit_code: int | None,
    output: bytes | str,
    *,
    timed_out: bool = False,
    exec_error: str | None = None,
) -> ProbeResult:
    """Classify one probe run; see the module docstring for the rules.

    Args:
        exit_code: the probe's exit status as Docker reports it (a negative value,
            a subprocess's "killed by signal N", counts as 128 + N); None when it
            is unknown.
        output: stdout and stderr together, bytes (decoded as UTF-8) or text;
            only the first :data:`MAX_OUTPUT_CHARS` characters are read.
        timed_out: the probe ran past ``probe.timeout`` and was killed.
        exec_error: the error Docker gave when creating or starting the exec.

    Never raises for any input.
    """
    if exec_error is not None:
        lowered_error = exec_error.lower()
        if _says_not_running(lowered_error) and "container" in lowered_error:
            return ProbeResult.NOT_RUNNING
        return ProbeResult.PROBE_UNAVAILABLE

    lowered = _text(output).lower()
    failure = _failure_in(lowered)
    if failure is not None:
        return failure

    if exit_code is not None and exit_code < 0:
        exit_code = 128 - exit_code
    failed = exit_code != 0
    if failed and any(
        _says_not_running(line) and "container" in line for line in lowered.splitlines()
    ):
        return ProbeResult.NOT_RUNNING
    if failed and any(phrase in lowered for phrase in _UNAVAILABLE_TEXT):
        return ProbeResult.PROBE_UNAVAILABLE

    if timed_out or exit_code is None:
        return ProbeResult.TIMEOUT
    if exit_code == 0:
        return ProbeResult.OK
    return _EXIT_RESULTS.get(exit_code, ProbeResult.NVML_UNKNOWN_ERROR)


def summarize_output(output: bytes | str, limit: int = 200) -> str:
    """One line of probe output worth putting in a record.

    The first line carrying an NVML failure sentence or a "could not run" phrase,
    else the first non-blank line; stripped, capped at ``limit`` characters, with
    no line breaks. Empty when the output is blank.
    """
    lines = [line.strip() for line in _text(output).splitlines() if line.strip()]
    best = next(
        (
            line
            for line in lines
            if _failure_in(line.lower()) is not None
            or any(phrase in line.lower() for phrase in _UNAVAILABLE_TEXT)
        ),
        lines[0] if lines else "",
    )
    return best if len(best) <= limit else best[: max(limit - 1, 0)] + "…"
