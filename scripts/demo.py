"""The gpuwatchd demo: the field report's evening, replayed in about a minute, no GPU needed.

Run through ``scripts/demo`` (which builds the bench and makes sure a Docker
engine answers). It starts the bench's simulated GPU (a temporary state
directory read by the stand-in ``libnvidia-ml.so.1``), a KonomiTV-like
container given that GPU as the NVIDIA toolkit would, and ``gpuwatchd run``
against them. Then persistence mode goes off and the driver idles: the
container's NVML breaks, KonomiTV's misleading ER-05 line appears, and
gpuwatchd detects it, re-enables persistence, restarts the container and
verifies the recovery, all shown as it happens. It ends with ``gpuwatchd
status`` and ``gpuwatchd diagnose``, and removes everything it started (the
container, the daemon, the temporary directory), also on Ctrl-C.

Exit status: 0 when the heal was seen end to end, 1 otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.bench lives in the working tree, not in the package

import docker  # noqa: E402
import docker.errors  # noqa: E402

from tests.bench import ER05_LINE, ONAIR_LINE, build_bench  # noqa: E402
from tests.bench.containers import ContainerFactory  # noqa: E402
from tests.bench.gpu import GpuController  # noqa: E402

#: Every demo resource carries this label (value: the run's token), so a test
#: can check that none is left behind.
DEMO_LABEL = "gpuwatchd-demo"
COLOR = sys.stdout.isatty()
#: Records worth a second look while they scroll by.
KEY_EVENTS = ("log_pattern_matched", "probe_failed", "gpu_persistence_off",
              "gpu_persistence_enabled", "container_restarted", "container_recovered",
              "remediation_failed", "remediation_gave_up")


def paint(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if COLOR else text


def step(text: str) -> None:
    print(paint(f"\n==> {text}", "1;36"), flush=True)


class DemoFailed(Exception):
    """Something the demo waits for did not happen in time."""


class Stream:
    """Prints the lines of a stream with a prefix, and remembers them for waiting."""

    def __init__(self, prefix: str, lines: Callable[[], object]) -> None:
        self.prefix = prefix
        self.seen: list[str] = []
        self.muted = False  #: still remembered for waiting, no longer printed
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self._thread.start()

    def _pump(self, lines: Callable[[], object]) -> None:
        try:
            for raw in lines():  # type: ignore[attr-defined]
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                for line in text.splitlines():
                    self.show(line)
        except (docker.errors.DockerException, OSError, ValueError):
            pass  # the stream ended with its source (container removed, daemon stopped)

    def show(self, line: str) -> None:
        shown = line
        if ER05_LINE in line or "(ER-05)" in line:
            shown = paint(line, "1;31")
        elif ONAIR_LINE in line:
            shown = paint(line, "32")
        elif any(event in line for event in KEY_EVENTS):
            shown = paint(line, "1;33")
        if not self.muted:
            print(f"{self.prefix} {shown}", flush=True)
        with self._changed:
            self.seen.append(line)
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> int:
        """Wait for a line (from index ``after`` on) matching ``pattern``; return its index."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for i in range(after, len(self.seen)):
                    if regex.search(self.seen[i]):
                        return i
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DemoFailed(f"no line matching {pattern!r} within {timeout:g}s")
                self._changed.wait(min(remaining, 0.5))


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``gpuwatchd ARGS``, show the command and its output; return its status
    and its standard output."""
    print(paint(f"$ gpuwatchd {' '.join(args)}", "1"), flush=True)
    proc = subprocess.run([sys.executable, "-m", "gpuwatchd", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    sys.stdout.write(proc.stdout + proc.stderr)
    print(paint(f"(exit status {proc.returncode})", "2"), flush=True)
    return proc.returncode, proc.stdout


def write_config(path: Path, work: Path, token: str) -> None:
    path.write_text(
        "# gpuwatchd demo configuration (temporary)\n"
        "[daemon]\n"
        f'state_dir = "{work / "state"}"\n'
        f'runtime_dir = "{work / "run"}"\n'
        "[watch]\n"
        f'labels = ["{DEMO_LABEL}={token}"]\n'
        "[probe]\n"
        'start_grace = "1s"\n'
    )
    path.chmod(0o600)


def demo(work: Path, token: str, cleanups: list[Callable[[], None]]) -> None:
    client = docker.from_env(timeout=120)
    cleanups.append(client.close)
    step("Building the bench: the stand-in NVIDIA driver and the KonomiTV-like image")
    bench = build_bench(client)
    gpu = GpuController(_mkdir(work / "gpu"), bench.lib_dir, bench.nvidia_smi)
    gpu.set_persistence(False)  # the field report's host: persistence mode off
    print(f"simulated GPU: {gpu.state().get('name.0')}, persistence mode off "
          f"(state in {gpu.state_dir})")

    step("Starting a KonomiTV-like container with the GPU (as the NVIDIA toolkit mounts it)")
    factory = ContainerFactory(client, bench.images, gpu, f"demo-{token}")
    cleanups.append(factory.cleanup)
    konomi = factory("konomi", name="konomitv", labels={DEMO_LABEL: token})
    print(f"container {konomi.name}; its log follows ('konomi │')")
    stopping = threading.Event()
    cleanups.append(stopping.set)

    def follow_log() -> Iterator[bytes]:
        # `docker logs -f` ends when the container stops: follow the restart too.
        since: float | None = None
        while not stopping.is_set():
            kwargs = {} if since is None else {"since": since}
            yield from konomi.logs(stream=True, follow=True, **kwargs)
            since = time.time()
            stopping.wait(0.2)

    container_log = Stream(paint("  konomi   │", "35"), follow_log)
    container_log.wait_for(re.escape(ONAIR_LINE), 30)

    step("Starting gpuwatchd against them (console log format; records marked 'gpuwatchd │')")
    config = work / "config.toml"
    write_config(config, work, token)
    env = {**os.environ, **gpu.env()}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gpuwatchd", "run", "--config", str(config),
         "--log-format", "console"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    cleanups.append(lambda: _stop(daemon))
    stderr: IO[bytes] = daemon.stderr  # type: ignore[assignment]
    records = Stream(paint("  gpuwatchd│", "34"), lambda: stderr)
    records.wait_for(r"watch_set_changed.*konomitv|konomitv.*watch_set_changed", 30)
    # Persistence was found off at start and is enabled now: undo it, as
    # nvidia-persistenced --no-persistence-mode does on the reporter's host.
    records.wait_for(r"gpu_persistence_enabled", 30)
    step("nvidia-persistenced --no-persistence-mode turns persistence off again; "
         "the driver goes idle")
    gpu.set_persistence(False)
    mark = len(records.seen)
    if not gpu.idle_driver():
        raise DemoFailed("the driver session did not end (persistence still on?)")
    print("driver session ended: NVML inside the container now fails with 'Unknown Error', "
          "and KonomiTV blames the tuner (ER-05)")

    step("Watching gpuwatchd detect it, re-enable persistence, restart and verify")
    container_log.wait_for(r"\(ER-05\)", 30)
    records.wait_for(r"log_pattern_matched", 30, after=mark)
    records.wait_for(r"gpu_persistence_enabled", 60, after=mark)
    records.wait_for(r"container_restarted", 60, after=mark)
    records.wait_for(r"container_recovered", 90, after=mark)
    healed = len(container_log.seen)
    container_log.wait_for(re.escape(ONAIR_LINE), 30, after=healed)
    time.sleep(2)  # a few healthy lines
    container_log.muted = True

    step("gpuwatchd status: the daemon's own view")
    run_cli(["status", "--config", str(config)], env)
    step("gpuwatchd diagnose: the whole investigation in one command")
    rc, out = run_cli(["diagnose", "--config", str(config), konomi.name], env)
    # The demo checks itself: diagnose must name the cause just healed, with
    # the lasting fix, and never blame the tuner.
    verdict = next((line for line in out.splitlines() if line.startswith("verdict:")), "")
    if rc != 0 or not verdict.startswith("verdict: healed:") or \
            "for persistence_off" not in verdict or "not_gpu" in out or \
            "nvidia-persistence-mode.service" not in out:
        raise DemoFailed(f"diagnose did not name the healed cause (exit {rc}): {verdict!r}")
    step("Done: the real cause behind ER-05 was persistence mode off; gpuwatchd healed it "
         "and diagnose says so, with the lasting fix. Cleaning up.")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    if os.geteuid() != 0:
        print("scripts/demo.py: run as root (through scripts/demo)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    token = os.urandom(4).hex()
    work = Path(tempfile.mkdtemp(prefix="gpuwatchd-demo-"))
    print(f"demo {token}: temporary files in {work}", flush=True)
    cleanups: list[Callable[[], None]] = [lambda: shutil.rmtree(work, ignore_errors=True)]
    status = 1
    try:
        demo(work, token, cleanups)
        status = 0
    except DemoFailed as exc:
        print(f"scripts/demo.py: the demo did not go as expected: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        status = 130
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # one failed clean-up must not skip the others
                print(f"scripts/demo.py: clean-up step failed: {exc}", file=sys.stderr)
    print("cleaned up: container removed, gpuwatchd stopped, temporary files deleted", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
