"""Which models count as untrained, and what the refusal says (pipeline/untrained.py)."""

from __future__ import annotations

import pytest

from affectstream.pipeline.untrained import UntrainedModelError, check_trained, untrained_models


@pytest.mark.parametrize("specs,expected", [
    (["mini_xception", "geometric"], []),            # pinned weights; no network
    (["ampnet", "dsan", "dsr_fau_student"], ["ampnet", "dsan", "dsr_fau_student"]),
    (["runs/ampnet/best.pt"], []),                   # a checkpoint is trained by definition
])
def test_untrained_models(specs, expected):
    assert untrained_models(specs) == expected


def test_check_trained_refuses_or_warns():
    assert check_trained(["mini_xception"], False, "pass --fer-model") == []
    with pytest.raises(UntrainedModelError, match=r"affectstream train configs/train/"
                       r"dsan_rafdb_two_stage.yaml .* pass --fer-model runs/dsan/best.pt"):
        check_trained(["dsan"], False, "pass --fer-model")
    (w,) = check_trained(["dsan"], True, "pass --fer-model")
    assert "dsan" in w and "random" in w
    with pytest.raises(KeyError, match="unknown model"):
        check_trained(["no_such_model"], True, "pass --fer-model")


_CHECK = ("import sys; from affectstream.pipeline.untrained import untrained_models; "
          "print(untrained_models(['mini_xception', 'dsan']), 'torch' in sys.modules)")


def _check_in_fresh_process(cache) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "AFFECTSTREAM_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True,
                          text=True, timeout=300, check=True).stdout.strip()


def test_the_card_index_spares_the_driver_torch_and_follows_the_code(tmp_path):
    import json

    from affectstream.models.registry import get_card, list_models
    from affectstream.pipeline.untrained import INDEX_FILE, card_fields

    index = tmp_path / INDEX_FILE
    assert _check_in_fresh_process(tmp_path) == "['dsan'] True"    # no index yet: the registry
    data = json.loads(index.read_text())
    assert sorted(data["cards"]) == list_models()
    assert data["cards"]["mini_xception"]["label_names"] == list(
        get_card("mini_xception").label_names)
    assert _check_in_fresh_process(tmp_path) == "['dsan'] False"   # the index: no torch
    data["digest"] = "other code"
    data["cards"]["dsan"]["weights"] = "made-up"
    index.write_text(json.dumps(data))
    assert _check_in_fresh_process(tmp_path) == "['dsan'] True"    # stale: rebuilt from the registry
    assert json.loads(index.read_text())["cards"]["dsan"]["weights"] is None
    assert card_fields()["dsan"]["task"] == get_card("dsan").task
