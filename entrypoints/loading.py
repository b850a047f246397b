"""Finding the user's HexQ app from ``--app=package.module:attribute`` or ``--app=package.module``."""

from __future__ import annotations

import importlib
import os
import sys

from hexq.core.errors import ConfigError
from hexq.entrypoints.app import HexQ


def load_app(spec: str) -> HexQ:
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise ConfigError(f"--app {spec!r}: expected 'package.module:attribute' or 'package.module'")
    # Like `python -m`, let apps in the current directory be found.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"--app {spec!r}: no module named {exc.name!r} (is it installed, or is the "
                              "current directory its parent?)") from exc
        raise
    if attribute:
        try:
            app = getattr(module, attribute)
        except AttributeError:
            raise ConfigError(f"--app {spec!r}: module {module_name!r} has no attribute {attribute!r}") from None
        if not isinstance(app, HexQ):
            raise ConfigError(f"--app {spec!r}: {attribute!r} is a {type(app).__name__}, not a HexQ app")
        return app
    found = [value for value in vars(module).values() if isinstance(value, HexQ)]
    if len(found) != 1:
        raise ConfigError(f"--app {spec!r}: module {module_name!r} holds {len(found)} HexQ apps; name one "
                          f"with {module_name}:<attribute>")
    return found[0]
