"""Adapters: the blocking clients the daemon talks to the world through.

Docker (or Podman), NVML, the host (cgroups, /proc, systemd units), sd_notify
and the state file. Each call blocks; the daemon runs them in worker threads.
"""
