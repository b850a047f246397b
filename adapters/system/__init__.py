"""Adapters over the operating system that are not about processes: the real clock."""
