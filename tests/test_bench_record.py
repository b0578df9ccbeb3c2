"""The recording benchmark, run tiny (one stream for a second, one round) so it cannot rot: both
ways record through the real CLI server, and only the passthrough one writes without transcoding.
Timing is never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_record_bench_runs_tiny(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    subprocess.run(
        [sys.executable, "-m", "bench", "record", "--streams", "1", "--seconds", "1", "--warmup", "0.5",
         "--repeat", "1", "--no-pin", "--json", str(out)],
        check=True, timeout=170, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert row["transcodingCpuPerStreamSecond"] > 0 and row["passthroughCpuPerStreamSecond"] > 0
    assert row["ratio"] is not None
    (transcoding,) = row["runs"]["transcoding"]
    (passthrough,) = row["runs"]["passthrough"]
    assert transcoding["passthrough"] == {"video": False} and passthrough["passthrough"] == {"video": True}
    for run in (transcoding, passthrough):
        assert run["writtenFpsMean"] > 0 and all(d and d > 0 for d in run["durations"]), run
    assert (out.with_suffix(".md")).read_text().startswith("| streams |")
