"""Entrypoints: the HexQ application object (composition root) and the command line."""
