"""``sessions`` (list, delete), ``timeline --limit`` and ``export`` on a real stored session."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.pipeline.stored import write_session

CLI = [sys.executable, "-m", "affectstream.pipeline.cli.main"]
pytestmark = pytest.mark.integration


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, input=input)


@pytest.fixture()
def stored(media, redis_url):
    t0 = int(time.time() * 1000)
    write_session(redis_url, media("single_face.mp4"), "clip1", max_frames=12)
    return redis_url, t0


def test_export_writes_parquet_csv_and_jsonl_with_the_api_columns(stored, tmp_path):
    import affectstream

    url, _ = stored
    ref = affectstream.read_timeline("clip1", redis_url=url)
    assert len(ref) == 12
    for ext in ("parquet", "csv", "jsonl"):
        path = tmp_path / f"clip1.{ext}"
        r = cli("--quiet", "export", "clip1", "-o", str(path), "--redis-url", url)
        assert r.returncode == 0, r.stderr
        df = (pd.read_parquet(path) if ext == "parquet" else pd.read_csv(path) if ext == "csv"
              else pd.read_json(path, lines=True, dtype=False))
        assert list(df.columns) == list(ref.columns) and len(df) == 12, ext
        assert df["timestamp_ms"].tolist() == ref["timestamp_ms"].tolist()
        assert (df["AU12_r"] - ref["AU12_r"]).abs().max() < 1e-6
    assert b"\r\n" not in (tmp_path / "clip1.csv").read_bytes()
    r = cli("export", "clip1", "-o", str(tmp_path / "x.xlsx"), "--redis-url", url)
    assert r.returncode == 2 and ".parquet, .csv, .jsonl" in r.stderr


def test_sessions_json_shows_capture_time_wall_clock_and_retention(stored):
    url, t0 = stored
    r = cli("sessions", "--json", "--redis-url", url)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["session_id"] == "clip1" and row["status"] == "ended" and row["tracks"] == 1
    assert abs(row["last_write_ms"] - t0) < 120_000  # wall clock of the run
    assert row["last_capture_ms"] != row["last_write_ms"]  # capture time: the file's date
    assert 7 * 86400 - 120 <= row["ttl_s"] <= 7 * 86400  # default redis.session_ttl_s
    r = cli("sessions", "--redis-url", url)
    assert "6d 23h" in r.stdout and "clip1" in r.stdout


def test_sessions_delete_removes_the_session(stored):
    url, _ = stored
    r = cli("sessions", "delete", "clip1", "--redis-url", url)  # stdin not a terminal
    assert r.returncode == 2 and "--yes" in r.stderr
    r = cli("sessions", "delete", "clip1", "--yes", "--redis-url", url)
    assert r.returncode == 0 and "deleted session 'clip1'" in r.stderr
    import redis

    assert redis.Redis.from_url(url).keys("*clip1*") == []
    assert json.loads(cli("sessions", "--json", "--redis-url", url).stdout) == []
    r = cli("sessions", "delete", "clip1", "--yes", "--redis-url", url)
    assert r.returncode == 1 and "no session 'clip1'" in r.stderr


def test_timeline_limit_every_ms_and_lf_csv(stored):
    url, _ = stored
    r = cli("timeline", "clip1", "--limit", "5", "-f", "csv", "--redis-url", url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert len([x for x in lines if x]) == 6 and "\r" not in r.stdout
    every = json.loads(cli("timeline", "clip1", "-f", "json", "--redis-url", url).stdout)
    r = cli("timeline", "clip1", "--every-ms", "100", "-f", "json", "--redis-url", url)
    rows = json.loads(r.stdout)
    # 12 frames at 30 fps span 367 ms: one point per 100 ms capture-time bucket (4 or 5 buckets
    # depending on where the clip's first ts_ms falls), the first point of each
    buckets = {p["ts_ms"] // 100 for p in every}
    assert len(every) == 12 and len(buckets) in (4, 5)
    assert [p["ts_ms"] // 100 for p in rows] == sorted(buckets)
    first = {}
    for p in every:
        first.setdefault(p["ts_ms"] // 100, p["ts_ms"])
    assert [p["ts_ms"] for p in rows] == [first[b] for b in sorted(first)]


def test_timeline_csv_and_json_carry_presence_and_head_pose(stored):
    url, _ = stored
    r = cli("timeline", "clip1", "-f", "csv", "--redis-url", url)
    assert r.returncode == 0, r.stderr
    import io

    df = pd.read_csv(io.StringIO(r.stdout))
    assert len(df) == 12
    assert {"AU12", "AU12_c", "yaw", "pitch", "roll", "gaze_yaw", "gaze_pitch"} <= set(df)
    assert ((df["AU12"] >= 2.0).astype(int) == df["AU12_c"]).all()
    assert df[["yaw", "pitch", "roll"]].abs().lt(45).all().all()
    rows = json.loads(cli("timeline", "clip1", "-f", "json", "--redis-url", url).stdout)
    assert all(isinstance(p["yaw"], float) and p["AU12_c"] in (0, 1) for p in rows)
    assert "landmarks" not in rows[0]  # off by default


def test_session_ttl_null_in_config_means_kept(tmp_path):
    from affectstream.pipeline.config import load_config

    y = tmp_path / "keep.yaml"
    y.write_text("redis:\n  session_ttl_s: null\n")
    assert load_config(str(y)).redis.session_ttl_s is None
    assert load_config().redis.session_ttl_s == 7 * 86400
