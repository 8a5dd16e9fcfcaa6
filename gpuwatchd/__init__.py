"""gpuwatchd: keeps NVIDIA GPUs usable inside Docker containers.

Watches host persistence mode through NVML, probes NVML inside watched
containers, follows their logs for the misleading ER-05 line, and heals the
cause (persistence mode, then a container restart) without ever looping.
"""

__version__ = "0.1.0"
