"""The pure decision layer: ``(event, now) -> actions``, and every rule it applies.

No I/O, no clocks, no threads: the observers feed it events with the time, and
the executor carries its actions out. Tested table-driven without Docker or a GPU.
"""
