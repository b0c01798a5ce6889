"""``affectstream eval-au``: AU-model quality on real media, in-process (no Ray, no Redis).

Runs one AU model (``geometric``: FaceMesh 468 + per-track neutral baseline,
:mod:`operators.au_geometric`; ``blendshape``: FaceMesh V2 + blendshapes, :mod:`operators.au_blendshape`)
on the most confident face of every frame of a clip and on labelled posed stills, and reports the
measures of :mod:`operators.au_eval`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import typer

from affectstream.operators.records import DISFA_AUS

eval_au_cli = typer.Typer(no_args_is_help=True)

DEFAULT_STILLS = ("surprise:0-f1-su-ph.jpg", "happiness:0-f15-hao-ph.jpg",
                  "anger:15-f13-anc-ph.jpg", "disgust:45-m7-di-ph.jpg")
STILL_REPEAT = 20  # a still is shown as a 20-frame clip (the geometric model needs warm-up)


class AURunner:
    """Frames -> (T, 12) AU intensities for one face track, with either AU model.

    Args:
        model: ``"geometric"`` or ``"blendshape"``.
        batch: frames per detector/landmark batch.
    """

    def __init__(self, model: Literal["geometric", "blendshape"], batch: int = 16) -> None:
        from affectstream.operators.detection import FaceDetector

        self.model, self.batch = model, batch
        self.det = FaceDetector("full")
        if model == "geometric":
            from affectstream.operators.au_geometric import GeometricAU
            from affectstream.operators.landmarks import FaceMeshLandmarker

            self.lm, self.au = FaceMeshLandmarker(max_batch_size=batch), GeometricAU()
        elif model == "blendshape":
            from affectstream.operators.au_blendshape import BlendshapeAU
            from affectstream.operators.face_mesh_v2 import FaceMeshV2Landmarker

            self.lm, self.au = FaceMeshV2Landmarker(max_batch_size=batch), BlendshapeAU()
        else:
            raise ValueError(f"unknown AU model {model!r}; known: geometric, blendshape")

    def reset(self) -> None:
        """Forget the geometric model's baselines (a new person/clip)."""
        if self.model == "geometric":
            self.au.reset()

    def run(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(au (T, 12) float32, kept (T,) bool)``: AUs of the frames where a face was found."""
        out, kept = [], []
        for i in range(0, len(frames), self.batch):
            chunk = frames[i:i + self.batch]
            dets = self.det.detect(chunk)
            boxes = [d.bbox_xyxy[:1] for d in dets]  # sorted by det_score: the best face
            faces = self.lm(chunk, boxes, [d.keypoints[:1] for d in dets])
            for f in faces:
                kept.append(len(f) > 0)
                if not len(f):
                    continue
                if self.model == "geometric":
                    out.append(self.au.update(np.array([1]), f.landmarks)[0])
                else:
                    out.append(self.au(f.blendshapes, f.landmarks)[0][0])
        au = np.stack(out) if out else np.zeros((0, len(DISFA_AUS)), np.float32)
        return au, np.asarray(kept, bool)


def read_clip(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """All frames (RGB uint8) of a video and their ``pts_ms``."""
    import av

    frames, pts = [], []
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(float(f.pts * st.time_base * 1000) if f.pts is not None else np.nan)
    return frames, np.asarray(pts)


def _resolve(name: str) -> Path:
    from affectstream.models.weights import artifact_path

    p = Path(name)
    return p if p.is_file() else artifact_path(name)


def evaluate(model: str, clip: str, segments: list[str], stills: list[str]) -> dict:
    """All measures as a JSON-able dict (see :mod:`operators.au_eval`).

    Raises:
        ValueError / KeyError: bad segment or still spec, unknown model or media name.
    """
    import cv2

    from affectstream.operators import au_eval

    segs = [au_eval.parse_segment(s) for s in segments]
    runner = AURunner(model)  # type: ignore[arg-type]
    frames, pts = read_clip(_resolve(clip))
    au, kept = runner.run(frames)
    res: dict = {"model": model, "clip": clip, "frames": len(frames), "frames_with_face":
                 int(kept.sum()), "aus": list(DISFA_AUS),
                 "saturated_share": au_eval.saturation(au).tolist(),
                 "jitter": au_eval.jitter(au).tolist(), "mean": au.mean(0).tolist(),
                 "segments": {k: {"frames": n, "mean": m.tolist()} for k, (n, m) in
                              au_eval.segment_means(au, pts[kept], segs).items()},
                 "stills": {}}
    for spec in stills:
        label, _, name = spec.partition(":")
        img = cv2.imread(str(_resolve(name)))
        if img is None:
            raise ValueError(f"cannot read still {name!r}")
        runner.reset()
        sau, _ = runner.run([cv2.cvtColor(img, cv2.COLOR_BGR2RGB)] * STILL_REPEAT)
        if not len(sau):
            res["stills"][name] = {"label": label, "face": False}
            continue
        chk = au_eval.prototype_check(label, sau[-1])
        res["stills"][name] = {"label": label, "face": True, "au": sau[-1].tolist(), **chk}
    return res


@eval_au_cli.command("eval-au")
def eval_au(
    model: str = typer.Option("blendshape", help="AU model: geometric | blendshape."),
    clip: str = typer.Option("WolfgangLanger_Pexels.mp4",
                             help="video file, or the name of a pinned test clip"),
    segment: list[str] = typer.Option(
        ["crying:0-6000", "laughing:9000-15000"], help="labelled time range NAME:START_MS-END_MS"),
    still: list[str] = typer.Option(list(DEFAULT_STILLS),
                                    help="labelled posed still EMOTION:FILE (or pinned name)"),
    json_out: Path = typer.Option(None, "--json", help="also write the results as JSON here"),
) -> None:
    """AU model quality on real media: saturation, jitter, segment means, prototype check."""
    from rich.console import Console
    from rich.table import Table

    from affectstream.pipeline.cli.common import fail

    try:
        res = evaluate(model, clip, segment, still)
    except (ValueError, KeyError) as e:
        fail(str(e.args[0] if e.args else e))
    con = Console(width=160)
    t = Table(title=f"{res['model']} on {res['clip']} ({res['frames_with_face']}/{res['frames']} "
              "frames with a face)")
    t.add_column("measure")
    for a in DISFA_AUS:
        t.add_column(a, justify="right")
    t.add_row("saturated % (==5)", *[f"{100 * v:.1f}" for v in res["saturated_share"]])
    t.add_row("jitter /frame", *[f"{v:.3f}" for v in res["jitter"]])
    t.add_row("mean", *[f"{v:.2f}" for v in res["mean"]])
    for k, s in res["segments"].items():
        t.add_row(f"{k} mean (n={s['frames']})", *[f"{v:.2f}" for v in s["mean"]])
    for name, s in res["stills"].items():
        if s["face"]:
            bar = "" if s["bar"] is None else (" PASS" if s["bar"] else " FAIL")
            t.add_row(f"{s['label']} still{bar}", *[f"{v:.2f}" for v in s["au"]])
        else:
            t.add_row(f"{s['label']} still: no face", *[""] * len(DISFA_AUS))
    con.print(t)
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=1))
