"""Adapters: implementations of the core's ports (memory, Redis, POSIX processes, the system clock)."""
