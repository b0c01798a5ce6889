"""`affectstream models list --details` prints each model's true parameter count."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from affectstream.models import create_model, list_models


@pytest.mark.slow
def test_models_list_details_params_match_modules():
    r = subprocess.run([sys.executable, "-m", "affectstream.pipeline.cli.main", "models", "list", "--details", "--batch", "1"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in list_models():
        row = next(line for line in r.stdout.splitlines() if re.search(rf"│ {name}\s+│", line))
        cells = [c.strip() for c in row.split("│")[1:-1]]
        params = int(cells[5].replace(",", ""))
        model = create_model(name, weights=None)
        assert params == sum(p.numel() for p in model.parameters()), name
