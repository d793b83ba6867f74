"""A short bounded pass of every fuzz target (fuzz/run.py): only hasyncd's own errors escape.

The real campaign is longer (``fuzz/run.py TARGET -max_total_time=600``);
this pass keeps the targets working and catches a regression that a few
thousand coverage-guided inputs find.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNS = 3000  # per target: a few seconds each


@pytest.mark.parametrize("target", ["frames", "handshake", "messages", "batch", "records"])
def test_fuzz_target_survives_a_short_pass(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    out = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), target, f"-runs={RUNS}", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,  # crash-* files, if any, land here
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"Done {RUNS} runs" in out.stderr
