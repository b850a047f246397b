"""``python -m bench.cluster_client hexq-cluster OP --out FILE ...``: ``bench.client`` for the cluster
workloads' system (``bench.cluster.HexqCluster``), which is not in ``bench.systems.SYSTEMS`` (it is never
part of a default run)."""

from bench import client
from bench.cluster import HexqCluster
from bench.systems import SYSTEMS

if __name__ == "__main__":
    SYSTEMS.setdefault(HexqCluster.name, HexqCluster)
    client.main()
