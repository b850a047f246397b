"""POSIX adapters: worker children by fork, signals, a shared-memory running board, psutil readings."""
