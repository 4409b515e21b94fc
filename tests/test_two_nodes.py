"""A node that cannot see a local --out: the job refuses with one line before any work.

The node joins the shared head inside its own mount namespace with an empty tmpfs over the
folder that holds --out (``unshare --mount``, as root), as a machine without the shared mount
would. It lives only for this test, so no other test's local --out is refused.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from jobs.local_ray import start_node

pytestmark = pytest.mark.slow


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_local_out_that_a_node_cannot_see_is_refused(ray_cluster, micro_data, tmp_path):
    hidden = tmp_path / "hidden"
    out = hidden / "out"
    out.mkdir(parents=True)
    node = start_node(ray_cluster, tmp_path / "ray-start.log", {"pav_blind": 1}, hidden=hidden)
    try:
        data = micro_data.data
        result = ray_cluster.run(sys.executable, "jobs/preprocess.py", "--config", "configs/micro.yaml",
                                 "--segments", str(data / "balanced_train_segments.csv"),
                                 "--labels", str(data / "class_labels_indices.csv"),
                                 "--media-dir", str(data / "clips"), "--out", str(out), check=False)
    finally:
        node.stop()
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: --out {out} is a local path that 1 of ") and "nodes cannot see" in line
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # refused before the lock or any shard
