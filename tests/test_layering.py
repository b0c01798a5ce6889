"""Import direction (DESIGN §3): operators know no Ray/Kafka/Redis; nothing imports pipeline."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_operators_import_no_ray_kafka_redis():
    code = ("import sys, affectstream.operators.facetrack, affectstream.operators.analyze, "
            "affectstream.operators.timeline, "
            "affectstream.operators.decode; bad = [m for m in ('ray', 'kafka', 'redis') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_package_imports_pipeline():
    pat = re.compile(r"^\s*(from|import)\s+(affectstream\.)?pipeline\b", re.M)
    for pkg in ("operators", "models", "training"):
        for f in (ROOT / pkg).rglob("*.py"):
            assert not pat.search(f.read_text()), f"{f} imports pipeline"
