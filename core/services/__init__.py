"""Application services: the worker child loop, the supervisor (worker parent) and the scheduler.

They drive the pure policy through the ports only, so each is unit-tested with the in-memory broker, the
fake clock and the fake process control.
"""
