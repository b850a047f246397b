"""Lets test modules share helpers as ``tests.unit.…`` however pytest is started: ``python -m pytest``
puts the repository root on ``sys.path``, the ``pytest`` script does not."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
