"""hexq's benchmark against its Redis-backed peers: ``python -m bench`` (see bench/README.md)."""
