"""The one exit-status table every gpuwatchd command uses (README: "Exit statuses")."""

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses, shared by every subcommand."""

    OK = 0  #: success, or healthy
    PROBLEM = 1  #: a problem was found (diagnose), or the daemon failed at run time
    USAGE = 2  #: usage or configuration error
    NO_DAEMON = 3  #: no running daemon answered
    CANNOT_CHECK = 4  #: could not check: NVML or Docker unavailable


EXIT_STATUS_HELP = """\
exit statuses:
  0  success, or healthy
  1  a problem was found (diagnose), or the daemon failed at run time
  2  usage or configuration error
  3  no running daemon answered
  4  could not check (NVML or Docker unavailable)
"""
