"""The device-access helper: joins a container's cgroups, opens its control node, tells.

Run as a program of its own (``python -I device_check_helper.py ...``) by
:mod:`gpuwatchd.adapters.device_check`, never imported by the daemon: it moves the
process that runs it into the container's cgroups, and that must never be the
daemon. It uses the standard library only and imports nothing of gpuwatchd,
so it starts fast.

Arguments: ``--cgroup2-mount M --cgroup2 PATH`` (the cgroup2 mount and the
container's path in it), ``--devices-mount M --devices PATH`` (the same for the
v1 devices hierarchy, on v1 or hybrid hosts),
``--child NAME`` (the child cgroup to use where joining DIR fails with EBUSY),
``--root DIR --node PATH`` (open PATH relative to DIR, following no symbolic
link: the container's ``/proc/<pid>/root`` and ``dev/nvidiactl``), or
``--node PATH`` alone (an absolute path in this mount namespace).

It prints one JSON object on stdout and exits 0: ``{"stage": "join" | "open",
"errno": N or null, "child": bool}``; ``stage`` ``join`` means it could not
join (errno says why) and opened nothing. Before it exits it moves itself back
to the cgroups it started in and removes the child cgroup it made.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import stat
import sys


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _open_node(root: str | None, node: str) -> int | None:
    """Opens the node read-only; returns None on success, else the errno."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fds: list[int] = []
    try:
        if root is None:
            fd = os.open(node, flags)
        else:
            # Walk from the container's root without following links: a link
            # planted in the image would otherwise resolve in the host's tree.
            fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            parts = [p for p in node.split("/") if p]
            for part in parts[:-1]:
                fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                   | os.O_CLOEXEC, dir_fd=fds[-1]))
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fds[-1])
        fds.append(fd)
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            return errno.ENODEV
        return None
    except OSError as exc:
        return exc.errno or 0
    finally:
        for fd in fds:
            os.close(fd)


def _home_paths() -> dict[str, str]:
    """Where this process starts: its cgroup2 path and v1 devices path."""
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        lines = f.read().splitlines()
    home: dict[str, str] = {}
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and not controllers:
            home["cgroup2"] = path
        elif "devices" in controllers.split(","):
            home["devices"] = path
    return home


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gpuwatchd-device-check")
    parser.add_argument("--cgroup2-mount")
    parser.add_argument("--cgroup2", help="the container's path in the cgroup2 hierarchy")
    parser.add_argument("--devices-mount")
    parser.add_argument("--devices", help="the container's path in the v1 devices hierarchy")
    parser.add_argument("--child", default="gpuwatchd-device-check")
    parser.add_argument("--root")
    parser.add_argument("--node", required=True)
    args = parser.parse_args(argv)
    home = _home_paths()
    targets = [
        (kind, mount, rel)
        for kind, mount, rel in (("cgroup2", args.cgroup2_mount, args.cgroup2),
                                 ("devices", args.devices_mount, args.devices))
        if mount and rel
    ]
    child: str | None = None
    joined: list[tuple[str, str]] = []  # (kind, mount) joined, to leave again
    result: dict[str, object] = {"stage": "open", "errno": None, "child": False}
    try:
        for kind, mount, rel in targets:
            where = os.path.join(mount, rel.lstrip("/"))
            try:
                _write(os.path.join(where, "cgroup.procs"), "0")
            except OSError as exc:
                if kind != "cgroup2" or exc.errno != errno.EBUSY:
                    raise
                # Controllers are on in its subtree_control: no process may sit
                # in it, only in a child, which inherits its device programs.
                child = os.path.join(where, args.child)
                os.mkdir(child, 0o700)
                result["child"] = True
                _write(os.path.join(child, "cgroup.procs"), "0")
            joined.append((kind, mount))
    except OSError as exc:
        result = {"stage": "join", "errno": exc.errno, "child": child is not None}
    else:
        result["errno"] = _open_node(args.root, args.node)
    finally:
        for kind, mount in joined:
            try:
                path = os.path.join(mount, home.get(kind, "/").lstrip("/"), "cgroup.procs")
                _write(path, "0")
            except OSError:
                pass  # it exits right away; the runner removes the child afterwards
        if child is not None:
            with contextlib.suppress(OSError):
                os.rmdir(child)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
