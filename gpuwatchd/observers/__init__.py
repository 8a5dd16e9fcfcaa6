"""Observers: the world turned into events for the core.

Docker events and the watch set (:mod:`.watch_set`, with :mod:`.docker_events`
and :mod:`.log_follower`), probe timers, the GPU poller, the systemd reload
watcher and the control socket. Each has the one :class:`~.base.Observer`
interface (start, stop, alive), feeds the daemon's queue and never carries
out an action.
"""
