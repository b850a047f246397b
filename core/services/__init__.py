"""Application services: sending tasks, running one task, the worker child loop, the worker parent's state
machine and the scheduler."""
