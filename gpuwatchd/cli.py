"""The ``gpuwatchd`` command line: ``run``, ``check-config``, and room for more.

Each subcommand is one function registered with :func:`subcommand`; it receives
the parsed arguments and returns an exit status from :class:`ExitCode`. A
:class:`ConfigError` raised by any of them becomes one line on stderr and exit 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpuwatchd import __version__
from gpuwatchd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    check_notify_available,
    check_ownership,
    load_config,
    render_effective,
)
from gpuwatchd.exitcodes import EXIT_STATUS_HELP, ExitCode

PROG = "gpuwatchd"
#: Overrides DEFAULT_CONFIG_PATH when set and not empty (handy for tests and
#: for a second instance); ``--config`` overrides both.
CONFIG_ENV = "GPUWATCHD_CONFIG"
#: The choices of ``run --log-format``; the same as ``gpuwatchd.sinks.log.LOG_FORMATS``
#: (a test pins that down), spelled here so ``--help`` need not import structlog.
LOG_FORMATS = ("console", "json", "journal")

Handler = Callable[[argparse.Namespace], int]
ArgumentAdder = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Subcommand:
    """One ``gpuwatchd NAME`` command: its help and the function that runs it."""

    name: str
    help: str  #: one line, shown in the top-level --help
    description: str  #: shown in the subcommand's own --help
    arguments: tuple[ArgumentAdder, ...]
    handler: Handler


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, *, help: str, description: str, arguments: Sequence[ArgumentAdder] = ()
) -> Callable[[Handler], Handler]:
    """Register the decorated function as ``gpuwatchd NAME``."""

    def register(handler: Handler) -> Handler:
        SUBCOMMANDS[name] = Subcommand(name, help, description, tuple(arguments), handler)
        return handler

    return register


# --------------------------------------------------------------------------
# Shared arguments and helpers


def default_config_path() -> Path:
    """``$GPUWATCHD_CONFIG`` when set and not empty, else ``/etc/gpuwatchd/config.toml``."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config PATH``."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )


def load_from_args(args: argparse.Namespace, *, check_owner: bool) -> Config:
    """Load the file ``--config`` names, or the default one.

    Raises:
        ConfigError: as :func:`load_config` does; for a missing default file the
            message says how to create one.
    """
    path: Path | None = args.config
    if path is None:
        path = default_config_path()
        if not os.path.lexists(path):
            raise ConfigError(
                "no configuration file: copy config.example.toml there "
                "(owner root, mode 600) or pass --config PATH",
                source=path,
            )
    return load_config(path, check_owner=check_owner)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _write_stdout(text: str) -> None:
    """Write ``text`` to stdout; a closed pipe (``| head``) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# --------------------------------------------------------------------------
# Subcommands


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    config_argument(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and record everything, change nothing (overrides daemon.dry_run)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="records for people (console), one JSON object per line (json), or native "
        "journal fields (journal); default: journal when stderr is the journal, else console",
    )


@subcommand(
    "run",
    help="run the watchdog daemon in the foreground",
    description="Run the watchdog daemon in the foreground (systemd starts it this way). "
    "The configuration file must be owned by root and not writable by group or others.",
    arguments=[_run_arguments],
)
def run_command(args: argparse.Namespace) -> int:
    """Load the config (owner-checked), then hand over to ``gpuwatchd.daemon.run_daemon``."""
    config = load_from_args(args, check_owner=True)
    check_notify_available(config)
    if args.dry_run:
        config = replace(config, daemon=replace(config.daemon, dry_run=True))
    try:
        # Imported here: check-config and --help must work without the daemon's
        # dependencies (docker, pynvml, systemd) being importable.
        daemon: Any = importlib.import_module("gpuwatchd.daemon")
        run_daemon = daemon.run_daemon
    except (ImportError, AttributeError) as e:
        _say(f"cannot start the daemon: {e}")
        return ExitCode.PROBLEM
    # force_dry_run: --dry-run must survive a reload of a file that says otherwise.
    return int(run_daemon(config, log_format=args.log_format, force_dry_run=args.dry_run))


@subcommand(
    "check-config",
    help="validate the configuration and print it with every default filled in",
    description="Validate the configuration file and print the effective configuration, "
    "every default filled in, as TOML that gpuwatchd reads back unchanged. "
    "Errors go to stderr as one line naming the file and the key.",
    arguments=[config_argument],
)
def check_config_command(args: argparse.Namespace) -> int:
    """Validate, print the effective configuration, warn if ``run`` would refuse the file."""
    config = load_from_args(args, check_owner=False)
    check_notify_available(config)
    try:
        _write_stdout(render_effective(config))
    except UnicodeEncodeError:
        # A terminal that cannot print the patterns gets the same TOML, escaped.
        _write_stdout(render_effective(config, ascii_only=True))
    if config.source is not None:
        try:
            check_ownership(config.source)
        except ConfigError as e:
            # A warning, not an error: check-config also vets drafts kept elsewhere.
            _say(f"warning: {e} (gpuwatchd run refuses such a file)")
    _warn_without_ip_sockets(config)
    _warn_unparsed_urls(config)
    return ExitCode.OK


def _warn_unparsed_urls(config: Config) -> None:
    """One line for each URL that Apprise cannot parse (named by its key and scheme).
    Apprise is imported here, in check-config's own short-lived process; the daemon
    finds the same URLs only at their first delivery (``notify_failed``)."""
    if not config.notify.urls:
        return
    from gpuwatchd.config import url_scheme
    from gpuwatchd.sinks.deliver import apprise_understands

    for i, url in enumerate(config.notify.urls):
        if not apprise_understands(url):
            _say(f"warning: notify.urls[{i}]: Apprise does not understand this "
                 f"{url_scheme(url)}:// URL (unknown scheme, or a part missing); "
                 "its notifications would fail")

def _warn_without_ip_sockets(config: Config) -> None:
    """One line when the config sends over the network and the installed unit
    (as far as :mod:`gpuwatchd.adapters.unit_network` can tell) allows AF_UNIX only."""
    from gpuwatchd.adapters import unit_network

    needs = [key for key, value in (("notify.urls", config.notify.urls),
                                    ("notify.webhook", config.notify.webhook)) if value]
    if needs and unit_network.ip_sockets_allowed() is False:
        verb = "need" if len(needs) > 1 else "needs"
        _say(f"warning: {' and '.join(needs)} {verb} IP sockets, but {unit_network.UNIT} "
             "allows AF_UNIX only: add a drop-in with "
             "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 "
             "(systemctl edit gpuwatchd; see README \"Notifications\")")


# --------------------------------------------------------------------------
# Talking to the running daemon: status, reset, pause, resume


def runtime_dir_from_args(args: argparse.Namespace) -> Path:
    """The daemon's runtime directory (where its control socket is).

    Read from the configuration without the owner check (any reader may ask);
    when no ``--config`` was given and the default file does not exist, the
    default runtime directory (``/run/gpuwatchd``).

    Raises:
        ConfigError: a configuration file that exists (or was named) is unusable.
    """
    from gpuwatchd.config import DaemonConfig

    if args.config is None and not os.path.lexists(default_config_path()):
        return DaemonConfig().runtime_dir
    return load_from_args(args, check_owner=False).daemon.runtime_dir


def _control(args: argparse.Namespace, payload: dict[str, Any]) -> tuple[int, Any]:
    """Send ``payload``; (OK, result), or one line on stderr and (NO_DAEMON | PROBLEM, None)."""
    from gpuwatchd.observers.control import ControlError, NoDaemon, request

    try:
        return ExitCode.OK, request(runtime_dir_from_args(args), payload)
    except NoDaemon as e:
        _say(f"{e}: is gpuwatchd running? (systemctl status gpuwatchd)")
        return ExitCode.NO_DAEMON, None
    except ControlError as e:
        _say(f"the daemon refused: {e}")
        return ExitCode.PROBLEM, None
    except OSError as e:
        _say(f"cannot talk to the daemon: {e.strerror or e}")
        return ExitCode.NO_DAEMON, None


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    config_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the daemon's status as one JSON document")


@subcommand(
    "status",
    help="show the running daemon's view: GPUs, watched containers, budgets, pauses",
    description="Ask the running daemon (through its control socket in daemon.runtime_dir, "
    "default /run/gpuwatchd; root only) for its state: each GPU's persistence mode and when "
    "it was last checked; each watched container's last probe, restarts in the window, "
    "given up or paused; uptime, dry run, degraded conditions. Exit 3 when no daemon answers.",
    arguments=[_status_arguments],
)
def status_command(args: argparse.Namespace) -> int:
    """Print the daemon's status for people, or as JSON with ``--json``."""
    import json
    import time

    from gpuwatchd.status_view import render_status

    code, result = _control(args, {"command": "status"})
    if code != ExitCode.OK:
        return code
    if not isinstance(result, dict):
        _say("the daemon sent an unexpected status answer")
        return ExitCode.PROBLEM
    if args.json:
        _write_stdout(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        _write_stdout(render_status(result, time.time()))
    return ExitCode.OK


def _target_argument(parser: argparse.ArgumentParser) -> None:
    config_argument(parser)
    parser.add_argument("container", nargs="?", default=None, metavar="CONTAINER",
                        help="a watched container's name (default: every container)")


def _duration(text: str) -> float:
    from gpuwatchd.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _pause_arguments(parser: argparse.ArgumentParser) -> None:
    _target_argument(parser)
    parser.add_argument("--for", dest="duration", type=_duration, default=None,
                        metavar="DURATION",
                        help='resume by itself after DURATION ("30m", "1h", "90s"); '
                        "default: until `gpuwatchd resume`")


def _who(container: str | None) -> str:
    return container if container else "every container"


def _send(args: argparse.Namespace, payload: dict[str, Any], done: str) -> int:
    code, result = _control(args, payload)
    if code == ExitCode.OK:
        if isinstance(result, dict) and result.get("pending"):
            done += " (queued: the daemon is busy and applies it in turn)"
        _write_stdout(done + "\n")
    return code


@subcommand(
    "reset",
    help="re-arm a given-up container: clear its restart budget",
    description="Clear the restart budget and give-up of CONTAINER (default: every "
    "container), so gpuwatchd may restart it again. Recorded as operator_reset.",
    arguments=[_target_argument],
)
def reset_command(args: argparse.Namespace) -> int:
    """Send ``reset``."""
    return _send(args, {"command": "reset", "container": args.container},
                 f"reset {_who(args.container)}: restart budget cleared, remediation re-armed")


@subcommand(
    "pause",
    help="stop remediation (for a driver upgrade or maintenance); probes go on",
    description="Stop remediation of CONTAINER (default: every container) until "
    "`gpuwatchd resume`, or for DURATION with --for. Probes and records go on; "
    "faults found meanwhile are recorded as remediation_skipped (reason paused). "
    "CONTAINER is a watched container's name or ID, or a name the configuration lists "
    "(running or not); any other name is refused (exit 1).",
    arguments=[_pause_arguments],
)
def pause_command(args: argparse.Namespace) -> int:
    """Send ``pause``, with ``for`` in seconds when ``--for`` is given."""
    from gpuwatchd.status_view import format_age

    span = f" for {format_age(args.duration)}" if args.duration else " until resumed"
    return _send(args, {"command": "pause", "container": args.container, "for": args.duration},
                 f"paused remediation of {_who(args.container)}{span}")


@subcommand(
    "resume",
    help="resume remediation stopped by `gpuwatchd pause`",
    description="Resume remediation of CONTAINER (default: every paused container). "
    "CONTAINER is a watched container's name or ID, a name the configuration lists, "
    "or one paused now; any other name is refused (exit 1).",
    arguments=[_target_argument],
)
def resume_command(args: argparse.Namespace) -> int:
    """Send ``resume``."""
    return _send(args, {"command": "resume", "container": args.container},
                 f"resumed remediation of {_who(args.container)}")


# --------------------------------------------------------------------------
# diagnose: the field report's investigation in one command


def _diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("containers", nargs="*", metavar="CONTAINER",
                        help="containers to examine (default: every watched container)")
    config_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the diagnosis as one JSON document")


def diagnose_config(args: argparse.Namespace) -> Config:
    """The configuration for ``diagnose``: read without the owner check (it changes
    nothing); every default when no ``--config`` was given and the default file
    does not exist.

    Raises:
        ConfigError: a file that exists, or was named with ``--config``, is unusable.
    """
    if args.config is None and not os.path.lexists(default_config_path()):
        return Config()
    return load_from_args(args, check_owner=False)


@subcommand(
    "diagnose",
    help="find out why NVML fails in a container, and print the fix (changes nothing)",
    description="Run the field report's investigation and name the cause: each container's "
    "recent logs against its patterns, the in-container NVML check, the host's NVML "
    "(driver, GPUs, persistence mode), nvidia-persistenced's flags, Docker's cgroup driver "
    "and how the container got its GPUs. Prints the verdict, its evidence and the commands "
    "that fix it now and for good. With no CONTAINER, every watched container. Read-only. "
    "Exit 0 healthy, 1 a problem found, 4 could not check (Docker or host NVML unavailable, "
    "a container not running or without nvidia-smi), 2 no such container.",
    arguments=[_diagnose_arguments],
)
def diagnose_command(args: argparse.Namespace) -> int:
    """Gather the facts, judge them, print the diagnosis; the exit status is its verdict."""
    import json

    from gpuwatchd.diagnose.facts import NoSuchContainer, gather
    from gpuwatchd.diagnose.render import render_text, to_json
    from gpuwatchd.diagnose.verdict import diagnose

    config = diagnose_config(args)
    try:
        result = diagnose(gather(config, args.containers))
    except NoSuchContainer as e:
        _say(f"no such container: {e}")
        return ExitCode.USAGE
    if args.json:
        _write_stdout(json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n")
    else:
        try:
            _write_stdout(render_text(result))
        except UnicodeEncodeError:
            _write_stdout(render_text(result).encode("ascii", "backslashreplace").decode())
    return int(result.exit_code)


# --------------------------------------------------------------------------
# The parser and the entry point

_EPILOG = f"""\
configuration:
  default file {DEFAULT_CONFIG_PATH}, or ${CONFIG_ENV} when set;
  every key is documented in config.example.toml

{EXIT_STATUS_HELP}"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keep NVIDIA GPUs usable inside Docker containers: watch persistence mode "
        "and in-container NVML, heal what breaks, never loop.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for sub in SUBCOMMANDS.values():
        sub_parser = commands.add_parser(
            sub.name,
            help=sub.help,
            description=sub.description,
            epilog=EXIT_STATUS_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for add in sub.arguments:
            add(sub_parser)
        sub_parser.set_defaults(handler=sub.handler)
    return parser


def _exit_status(code: object) -> int:
    """The status a ``SystemExit`` from argparse carries (help: 0, usage error: 2)."""
    if code is None:
        return ExitCode.OK
    return code if isinstance(code, int) else ExitCode.USAGE


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its status.

    Usage errors exit 2 with argparse's message; a :class:`ConfigError` prints one
    line on stderr and returns 2. Nothing a user can get wrong ends in a traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return _exit_status(e.code)
    handler: Handler = args.handler
    try:
        return int(handler(args))
    except ConfigError as e:
        _say(str(e))
        return ExitCode.USAGE
