"""Observers: the world turned into events for the core.

Docker events and the watch set, container logs, the GPU, the systemd reload
watcher and the control socket. Each feeds the daemon's queue and acts on nothing.
"""
