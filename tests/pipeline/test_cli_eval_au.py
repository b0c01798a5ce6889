"""``affectstream eval-au``: argument errors are one-line user errors; a short real run works."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from affectstream.pipeline.cli.main import app


def test_bad_segment_is_a_one_line_error():
    res = CliRunner().invoke(app, ["eval-au", "--segment", "laughing"])
    assert res.exit_code == 1 and "NAME:START_MS-END_MS" in res.output


@pytest.mark.slow
def test_blendshape_eval_on_a_real_clip_and_still(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval-au", "--model", "blendshape", "--clip", "single_face.mp4",
                                   "--segment", "all:0-100000",
                                   "--still", "happiness:0-f15-hao-ph.jpg", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["frames_with_face"] > 0.9 * r["frames"]
    assert max(r["saturated_share"]) < 0.05
    assert r["stills"]["0-f15-hao-ph.jpg"]["bar"] is True
