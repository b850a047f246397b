"""Prometheus adapter: the Metrics port as prometheus_client counters, a histogram and gauges, and a
``/metrics`` endpoint that sums a worker parent and its forked children (``pip install 'hexq[prometheus]'``)."""
