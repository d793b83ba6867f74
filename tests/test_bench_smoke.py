"""The benchmark harness (bench/run.py) still runs end to end and reports every figure.

A smoke run on tiny sizes, without Redis: it checks the harness, not speed
(no figure is compared with anything; speed is measured by the benchmark).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HASYNCD_FIGURES = {
    "throughput_ndjson_rec_s",
    "throughput_msgpack_rec_s",
    "ingest_ndjson_rec_s",
    "lag_p50_ms",
    "lag_p99_ms",
    "lag_achieved_w_s",
    "put_async_p50_ms",
    "put_async_p99_ms",
    "put_sync_p50_ms",
    "put_sync_p99_ms",
    "join_in_sync_s",
    "join_worst_heartbeat_silence_ms",
    "join_stalls_over_50ms",
    "join_worst_loop_lag_s",
    "join_false_promotion",
    "join_peers_lost",
    "primary_cpu_per_record_us",
    "rss_per_record_b",
    "cpu_per_record_us",
}
REDIS_ONLY = {"used_memory_per_record_b"}


@pytest.mark.integration
def test_bench_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, "bench/run.py", "--preset", "smoke", "--runs", "1", "--no-redis"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert set(figures) == HASYNCD_FIGURES | REDIS_ONLY
    for key in HASYNCD_FIGURES:
        assert figures[key]["hasyncd"] is not None, key
        assert figures[key]["redis"] is None, key  # --no-redis
    run = result["raw"]["hasyncd"]["runs"][0]
    # Every paced write was acknowledged and seen arriving on the secondary.
    assert run["lag"]["failed_ops"] == 0
    assert run["lag"]["missing"] == 0
    assert run["ndjson"]["failed_ops"] == run["msgpack"]["failed_ops"] == 0
    assert figures["join_false_promotion"]["hasyncd"] is False
    assert result["redis_skipped"] == "--no-redis"
    for fact in ("nproc", "cpu_model", "python", "hasyncd_commit"):
        assert result["machine"][fact], fact
    assert "end-to-end replication" in proc.stdout
