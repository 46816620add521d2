"""Scheduling: which node of a zone gets each instance of a RunInstances request.

Pure functions over small records, no I/O: control/instances.py builds a ``NodeCapacity``
for every reachable node of the zone (from its last heartbeat minus what control has
already placed there) inside the write transaction that creates the instances, so two
concurrent requests can never book the same cores twice (the writer serialises them).

Policy, in order:
  1. the node must fit the instance type (cores, memory, disk);
  2. a node that already holds the image (and its kernel and ramdisk) in its cache is
     preferred: launching there fetches nothing;
  3. then the node with the most free memory (spreads load; ties by most free cores,
     then node id, so the choice is deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    node_id: str
    cores: int          # free cores
    memory_mib: int     # free memory
    disk_gb: int        # free disk
    images: frozenset[str] = frozenset()

    def fits(self, cores: int, memory_mib: int, disk_gb: int) -> bool:
        return self.cores >= cores and self.memory_mib >= memory_mib and self.disk_gb >= disk_gb

    def minus(self, cores: int, memory_mib: int, disk_gb: int) -> "NodeCapacity":
        return replace(self, cores=self.cores - cores, memory_mib=self.memory_mib - memory_mib,
                       disk_gb=self.disk_gb - disk_gb)


def place(nodes: list[NodeCapacity], count: int, *, cores: int, memory_mib: int, disk_gb: int,
          images: tuple[str, ...] = ()) -> list[str]:
    """Node ids for up to ``count`` instances (fewer if capacity runs out; never more)."""
    free = {n.node_id: n for n in nodes}
    wanted = set(images)
    chosen: list[str] = []
    for _ in range(count):
        fitting = [n for n in free.values() if n.fits(cores, memory_mib, disk_gb)]
        if not fitting:
            break
        best = min(fitting, key=lambda n: (not wanted <= n.images, -n.memory_mib, -n.cores, n.node_id))
        chosen.append(best.node_id)
        free[best.node_id] = best.minus(cores, memory_mib, disk_gb)
    return chosen


def how_many_fit(node: NodeCapacity, *, cores: int, memory_mib: int, disk_gb: int) -> int:
    """Instances of one type that fit on a node (for DescribeAvailabilityZones verbose)."""
    limits = [node.cores // cores if cores else None, node.memory_mib // memory_mib if memory_mib else None,
              node.disk_gb // disk_gb if disk_gb else None]
    known = [x for x in limits if x is not None]
    return max(0, min(known)) if known else 0
