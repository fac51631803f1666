"""The ingestion benchmark still runs: `bench/ingest.py --smoke` (1 s runs at 1 and 4
connections), with its figures written to a temporary directory, not bench/RESULTS.md.

No performance figure is asserted here (bench/README.md): only that wrk ran, produced numbers,
and that every request was acknowledged with a 202 and found in the log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import ingest  # noqa: E402


def test_ingest_benchmark_smoke(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the benchmark pins the server and wrk to two different cores")
    if ingest.ensure_wrk() is None:  # installs Debian's wrk when missing and running as root
        pytest.skip("wrk is missing and cannot be installed here (apt-get install wrk, as root)")
    raw, results = tmp_path / "ingest.json", tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--smoke"]
        + ["--results", str(results), "--plot", str(tmp_path / "plot.png"), "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(raw.read_text())["runs"]
    seen = {(r["scenario"], r["target"], r["connections"]) for r in runs}
    for connections in (1, 4):
        for target in (ingest.BASELINE, ingest.TRACKHOUSE):
            assert ("single", target, connections) in seen
    assert ("single", ingest.NO_PROCESS, 4) in seen
    assert ("bulk", ingest.TRACKHOUSE, 1) in seen and ("bulk", ingest.NO_PROCESS, 1) in seen
    for r in runs:
        where = f"{r['scenario']} {r['target']} c={r['connections']}"
        assert r["requests"] > 0 and r["rps"] > 0 and r["p99_ms"] > 0, where
        assert r["statuses"] == {"202": r["requests"]}, (where, r["statuses"])
        assert r["non_2xx_3xx"] == 0 and not any(r["socket_errors"].values()), where
        if r["target"] != ingest.BASELINE:  # every 202 is in the log
            assert r["logged_requests"] >= r["requests"], where
    text = results.read_text()
    assert "## Ingest" in text and "ratio to baseline" in text and "<!-- ingest:end -->" in text


def test_read_benchmark_smoke() -> None:
    """bench/read.py builds its store on both backends and serves the same reads from each
    (a few thousand events): every request answered, a line of figures per backend and kind."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the benchmark pins the server and its client to two different cores")
    # Not under pytest's tmp_path: as root, PostgreSQL runs as the postgres user, who must be
    # able to reach its cluster's directory.
    where = Path(tempfile.mkdtemp(prefix="trackhouse-read-smoke-"))
    where.chmod(0o755)
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "read.py"), "--events", "3000"]
            + ["--profiles", "300", "--metrics", "1", "--requests", "20"]
            + ["--pg-shared-buffers", "16MB", "--dir", str(where)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for backend in ("sqlite", "postgres 16MB"):
        for kind in ("baseline (404, no store)", "by profile_id", "200 per page"):
            assert any(
                line.startswith(f"{backend}, ") and kind in line and " p99 " in line
                for line in lines
            ), (backend, kind, done.stdout)
    assert any("× SQLite's" in line for line in lines), done.stdout


def test_segments_benchmark_smoke() -> None:
    """bench/segments.py's three parts on small stores: each prints its figures, and the new
    segment is computed (members were served)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the benchmark pins the server and its client to two different cores")
    where = Path(tempfile.mkdtemp(prefix="trackhouse-segments-smoke-"))
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "segments.py"), "--runs", "1"]
            + ["--profiles", "200", "--events", "2000", "--big-profiles", "3000"]
            + ["--big-events", "20000", "--ingest", "2000", "--requests", "20"]
            + ["--dir", str(where)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "live: 2,000 events over 200 profiles" in out and "with 20:" in out
    assert "while a new segment is computed" in out and "computed in median" in out
    assert "a page at a random member: p50" in out
