"""The pure domain core of hexq: task model, policy, cron, ports and the services that drive them.

Nothing in this package performs I/O by itself: storage comes through the Broker port, time through the
Clock port and processes through the ProcessControl port (see ``hexq.core.ports``).
"""
