"""Delivery rules that are policy, not storage: every broker adapter is handed them by the composition
root (as it is handed ``now_ms`` on each call), so the rules are written once, here."""

from __future__ import annotations

import attrs

# An expired lease is first only suspected, and its tasks are put back only if it is still not renewed
# this long after a reservation first saw it expired. Nobody can renew while the broker is unreachable:
# without the grace, the first reservation after an outage longer than the lease would hand running tasks
# to other workers.
EXPIRY_GRACE_MS = 3000
# A worker heartbeat older than this belongs to a worker that died without saying goodbye: forget it.
STALE_WORKER_MS = 10 * 60 * 1000
# A broadcast is copied for the workers whose last heartbeat is at most this old. A worker parent beats at
# least once a second (min(1 s, lease_timeout / 4)), so this is ten missed beats: more than a beat delayed by
# one slow broker call (a socket timeout) or a short outage, so a live worker is not skipped; short enough
# that a worker killed without a goodbye stops being counted (and sent copies nobody runs) within seconds.
LIVE_WORKER_MS = 10_000
# The per-minute counters the workers write for the dashboard's chart (MinuteTally) are kept this long: the
# chart shows the last hour, and a minute must outlive it.
TALLY_TTL_MS = 2 * 3600 * 1000
MINUTE_MS = 60_000


MAX_TALLY_MINUTES = 24 * 60  # Inspection.tallies reads at most a day


def minute_of(epoch_ms: int) -> int:
    """The start of the minute ``epoch_ms`` falls in: the key of the per-minute counters."""
    return epoch_ms - epoch_ms % MINUTE_MS


def tally_minutes(from_ms: int, to_ms: int) -> list[int]:
    """The starts of the minutes from the one holding ``from_ms`` to the one holding ``to_ms``: at most a day's,
    the latest ones (``Inspection.tallies``)."""
    first, last = minute_of(from_ms), minute_of(to_ms)
    first = max(first, last - (MAX_TALLY_MINUTES - 1) * MINUTE_MS)
    return list(range(first, last + 1, MINUTE_MS))


@attrs.frozen
class LeaseRules:
    expiry_grace_ms: int = EXPIRY_GRACE_MS
    stale_worker_ms: int = STALE_WORKER_MS
    live_worker_ms: int = LIVE_WORKER_MS
    tally_ttl_ms: int = TALLY_TTL_MS
