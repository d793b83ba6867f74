"""Shared fixtures: real two-node clusters on loopback, built on hasyncd.lab.LabCluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasyncd.lab import LabCluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    """Factory: make_cluster(names=..., priorities=..., base={...}) -> started LabCluster.

    Every cluster made here is stopped at teardown; on failure the node logs are
    printed so a failing integration test explains itself.
    """
    made: list[LabCluster] = []

    def factory(**kw: Any) -> LabCluster:
        workdir = tmp_path / f"c{len(made)}"
        workdir.mkdir()
        cluster = LabCluster.loopback(workdir, **kw)
        made.append(cluster)
        cluster.start()
        return cluster

    yield factory
    for cluster in made:
        for node in cluster.nodes.values():
            node.kill()
        if os.environ.get("HASYNCD_TEST_LOGS"):
            for node in cluster.nodes.values():
                if node.log.exists():
                    print(f"--- {node.name} log ---\n{node.log.read_text()[-5000:]}")
