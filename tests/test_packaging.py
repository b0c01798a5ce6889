"""One import namespace (DESIGN §9): everything installs under ``affectstream``, nothing generic."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = ("pipeline", "operators", "models", "training")


def test_every_source_package_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {"affectstream"}
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            if rel.parts[:2] == ("pipeline", "_root"):
                continue
            found.add(".".join(("affectstream", *rel.parts)))
    assert found == listed, f"missing {sorted(found - listed)}, stale {sorted(listed - found)}"
    assert all(p == "affectstream" or p.startswith("affectstream.") for p in listed)


def test_import_affectstream_gives_the_version(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import affectstream; print(affectstream.__version__)"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()[0].isdigit(), r.stdout


def test_a_folder_with_its_own_models_package_does_not_shadow_ours(tmp_path):
    for name in ("models", "pipeline", "operators", "training"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user\\'s own package')\n")
    code = ("import affectstream.models as m; from affectstream.models.registry import list_models; "
            "print(m.__file__); print(sorted(list_models()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(ROOT) in r.stdout.splitlines()[0] or "site-packages" in r.stdout.splitlines()[0]
    assert "mini_xception" in r.stdout
