"""Randomness that belongs to one process: a fork never shares it with the parent or a sibling.

A ``random.Random`` object is not reseeded by fork, so a generator made in a worker parent and used in its
children would make every child draw the same "random" retry jitter, in step. Both the id node and the
generator are made again in each new process (``os.register_at_fork``), at no cost per call.
"""

from __future__ import annotations

import os
import random
import secrets


class ProcessEntropy:
    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._node = secrets.token_hex(4)
        self._random = random.Random(secrets.randbits(128))

    def node(self) -> str:
        """8 hex digits naming this process in task ids."""
        return self._node

    def random(self) -> float:
        """A float in [0, 1), from this process's own generator."""
        return self._random.random()


PROCESS = ProcessEntropy()  # one per process; renewed in every forked child
