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
