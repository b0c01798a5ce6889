"""The deployment docs point at files that exist (k8s/README.md, docs/scaling.md)."""

from __future__ import annotations

import re

import pytest

from tests.k8s.conftest import K8S, ROOT

DOCS = (K8S / "README.md", ROOT / "docs" / "scaling.md")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_named_in_the_docs_exist(doc) -> None:
    text = doc.read_text()
    paths = set(re.findall(r"`((?:k8s|docs|configs|pipeline|tests)/[\w./-]+)`", text))
    assert paths, f"{doc} names no repository paths"
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names missing paths: {missing}"


def test_scaling_doc_covers_the_three_sizes() -> None:
    text = (ROOT / "docs" / "scaling.md").read_text()
    for n in ("10 streams", "100 streams", "1,000 streams"):
        assert n in text
    # the derived load rows are arithmetic on the stated inputs (R=10 frames/s, F=2 faces)
    assert "| analysed frames/s, `N x R` | 100 | 1,000 | 10,000 |" in text
    assert "| faces/s to Inference, `N x R x F` | 200 | 2,000 | 20,000 |" in text
