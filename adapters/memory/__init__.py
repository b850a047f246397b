"""In-memory adapters: a complete Broker (the SQLite broker on an in-memory database), a fake Clock and a
fake ProcessControl, for dev runs and tests."""

from hexq.adapters.memory.broker import MemoryBroker
from hexq.adapters.memory.clock import FakeClock
from hexq.adapters.memory.processes import FakeProcessControl

__all__ = ["FakeClock", "FakeProcessControl", "MemoryBroker"]
