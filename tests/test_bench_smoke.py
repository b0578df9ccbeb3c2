"""The signaling benchmark, run tiny (a few peers, half-second windows) so it cannot rot.

It starts the real servers (ours through the CLI, the bare aiohttp forwarder, the PeerJS server
from npm when Node is there) and the real load generator processes, exactly as ``make bench``
does; only the sizes are small. Timing is never asserted: only that every scenario ran against
every server and every message arrived.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench.signaling import BEGIN, END, parse_wrk, write_doc

from tests.helpers import IN_CI, require_program

ROOT = Path(__file__).resolve().parent.parent


def _servers() -> list[str]:
    servers = ["ours", "bare"]
    if shutil.which("node") and shutil.which("npm"):
        servers.append("peerjs")
    elif IN_CI:
        pytest.fail("node and npm are required in CI for the PeerJS server (make test installs them)")
    return servers


@pytest.mark.timeout(180)
def test_signaling_bench_runs_every_scenario_against_every_server(tmp_path: Path) -> None:
    require_program("wrk")
    require_program("taskset")
    servers = _servers()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "signaling", "--quick", "--servers", ",".join(servers), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((tmp_path / "signaling.json").read_text())
    assert sorted(results["meta"]["kinds"]) == sorted(servers)
    for kind in servers:
        for res in results["relay"][kind]["throughput"]:
            assert res["msgs_per_s"] > 0, (kind, res)
        for res in results["relay"][kind]["latency"]:
            assert res["sent"] > 0 and res["received"] == res["sent"], (kind, res)
            assert res["p99_ms"] is not None and res["p99_ms"] >= res["p50_ms"] > 0
        idle = results["idle"][kind]
        assert idle["peers"] == results["meta"]["idle_peers"] and idle["lost"] == 0, (kind, idle)
        assert idle["heartbeats"] > 0
        churn = results["churn"][kind]
        assert churn["cycles_per_s"] > 0 and churn["errors"] == 0, (kind, churn)
    for kind in ("ours", "bare"):
        http = results["http"][kind]
        assert http["requests_per_s"] > 0 and http["non_2xx"] == 0, (kind, http)
        assert http["delivered_to_ws"] > 0, "the HTTP signals never reached the receiving WebSocket"
    table = (tmp_path / "signaling.md").read_text()
    assert "### Relay throughput" in table and "fantasize-rtc" in table


def test_bench_dispatcher_rejects_unknown_benchmarks() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "nonsense"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "unknown benchmark" in proc.stderr


def test_parse_wrk_reads_rate_and_percentiles() -> None:
    text = """Running 5s test @ http://127.0.0.1:1/rtc/signal
  Latency Distribution
     50%    3.10ms
     75%    4.00ms
     90%    5.00ms
     99%  812.00us
  41234 requests in 5.00s, 6.00MB read
  Non-2xx or 3xx responses: 7
Requests/sec:   8246.80
"""
    parsed = parse_wrk(text)
    assert parsed["requests_per_s"] == 8246.8
    assert parsed["p50_ms"] == 3.1 and parsed["p99_ms"] == 0.81
    assert parsed["non_2xx"] == 7


def test_write_doc_replaces_only_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n\n## Signaling\nintro\n{BEGIN}\nold table\n{END}\nnotes\n\n## Media\nkept\n")
    write_doc("| new | table |", doc)
    text = doc.read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("# B\n\n## Signaling\nintro\n") and text.endswith("notes\n\n## Media\nkept\n")
    doc.write_text("# no markers\n")
    with pytest.raises(RuntimeError):
        write_doc("x", doc)


def test_media_bench_runs_tiny(tmp_path: Path) -> None:
    """Our echo and the aiortc MediaRelay baseline, one stream for a second: the bench cannot rot."""
    out = tmp_path / "media.json"
    subprocess.run(
        [sys.executable, "-m", "bench", "media", "--streams", "1", "--seconds", "1", "--warmup", "0.5",
         "--latency-runs", "1", "--repeat", "1", "--no-pin", "--no-passthrough", "--json", str(out)],
        check=True, timeout=240, capture_output=True,
    )  # fmt: skip
    text = out.read_text()
    assert "MediaRelay" in text and "fantasize-rtc" in text


def test_redis_bench_runs_tiny(tmp_path: Path) -> None:
    """Two processes on a real Redis against one in memory, a second each."""
    require_program("redis-server")
    subprocess.run(
        [sys.executable, "-m", "bench", "redis", "--duration", "1", "--pairs", "2", "--repeat", "1",
         "--out", str(tmp_path)],
        check=True, timeout=240, capture_output=True,
    )  # fmt: skip
    summary = json.loads((tmp_path / "redis.json").read_text())
    assert [row["msgs_per_s"] > 0 for row in summary["rows"]] == [True] * len(summary["rows"])
    assert sum(row["lost"] for row in summary["rows"]) == 0


def test_hotpath_and_late_join_benches_run_tiny(tmp_path: Path) -> None:
    """The relay hot path a few hundred times; one late join of each kind through @sfu."""
    hot = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "-n", "300", "--repeat", "1"],
        check=True, timeout=120, capture_output=True, text=True,
    )  # fmt: skip
    assert "us/message" in hot.stdout
    out = tmp_path / "sfu.json"
    subprocess.run(
        [sys.executable, "-m", "bench", "sfu", "--repeat", "0", "--late-joins", "1", "--no-pin", "--json", str(out)],
        check=True, timeout=240, capture_output=True,
    )  # fmt: skip
    runs = json.loads(out.read_text())["lateJoins"]
    assert [(r["slots"], "error" in r) for r in runs] == [(False, False), (True, False)], runs
    assert runs[0]["offers"] >= 1 and runs[1]["offers"] == 0, runs  # renegotiation vs receive slots
