"""Sinks: records out of the daemon (journal/JSON/console, notifications, metrics)."""
