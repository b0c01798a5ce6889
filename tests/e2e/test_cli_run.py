"""``affectstream run`` as a user runs it (a subprocess): from a folder that has its own
``models/`` and ``pipeline/`` packages, on a clip of a six-person photo; and the refusal of models
without trained weights (``--allow-untrained``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from affectstream.pipeline.store.redis_store import TimelineStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affectstream.pipeline.cli.main", *args],
                          capture_output=True, text=True, timeout=420, cwd=cwd)


def photo_clip(photo: Path, dst: Path, frames: int = 10, fps: int = 10) -> Path:
    """An H.264 mp4 of ``frames`` copies of ``photo`` at ``fps`` (PyAV encode)."""
    import av
    import cv2

    img = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    img = img[: h - h % 2, : w - w % 2]
    with av.open(str(dst), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        st.options = {"crf": "18"}
        for _ in range(frames):
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return dst


def test_run_from_a_folder_with_its_own_models_and_pipeline_packages(redis_url, media, tmp_path):
    work = tmp_path / "user-project"
    for name in ("models", "pipeline"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text("raise ImportError('the user\\'s own package')\n")
    clip = photo_clip(media("t1.jpg"), work / "meeting.mp4")
    r = _cli("run", "meeting.mp4", "--session", "meeting", "--redis-url", redis_url, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "10 frames analysed" in r.stdout and "6 tracks" in r.stdout, r.stdout
    store = TimelineStore(redis.Redis.from_url(redis_url, decode_responses=True))
    counts = store.count_points("meeting")
    # six people in every frame: six tracks; the two faces BlazeFace scores below
    # new_track_thresh (0.62, 0.55) join after track.activation_ms (60 ms = 2 frames at 10 fps)
    assert sorted(counts) == [1, 2, 3, 4, 5, 6]
    assert all(n >= 9 for n in counts.values()), counts
    assert clip.is_file()


@pytest.mark.parametrize("args,expected", [
    (["--fer-model", "ampnet"],
     "affectstream train configs/train/ampnet_rafdb.yaml --data DATASET_DIR) and pass "
     "--fer-model runs/ampnet/best.pt"),
    (["--au-model", "dsr_fau_student"], "pass --au-model runs/student/best.pt"),
])
def test_run_refuses_a_model_without_trained_weights(media, args, expected):
    # an unreachable Redis: the refusal comes first, before anything is started
    r = _cli("run", str(media("single_face.mp4")), "--redis-url", "redis://127.0.0.1:1/0", *args)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "has no trained weights" in r.stderr and expected in r.stderr
    assert "--allow-untrained" in r.stderr


def test_run_allows_an_untrained_model_with_the_flag_and_warns(redis_url, media):
    r = _cli("run", str(media("single_face.mp4")), "--session", "untrained", "--redis-url",
             redis_url, "--fer-model", "ampnet", "--allow-untrained", "--max-frames", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning: model 'ampnet' has no trained weights" in r.stderr
    assert "3 frames analysed" in r.stdout
    assert TimelineStore(redis.Redis.from_url(redis_url)).count_points("untrained") == {1: 3}
