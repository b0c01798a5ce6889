"""Records crossing the inference boundary, and the batched forward over them.

Plain Python (no Ray): the Serve deployment (:mod:`affectstream.pipeline.runtime.inference_app`) and the
in-process :class:`~affectstream.pipeline.runtime.local_inference.LocalInference` both call
:func:`analyze_batch`.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from affectstream.operators.analyze import FaceAnalyzer


@dataclasses.dataclass
class InferRequest:
    """The faces of one frame.

    Attributes:
        crops: (N, H, W) or (N, H, W, 3) uint8, cut for the expression model.
        points01: (N, 468, 2) float32 FaceMesh points in crop coordinates, in [0, 1] (saliency
            region summary, landmark-guided models), or None.
        saliency_mask: (N,) bool, faces that need a fresh saliency map (None = all).
        landmarks3d: (N, 478, 3) float32 FaceMesh V2 landmarks in frame pixels (x right, y down;
            z relative depth in the same pixel scale, smaller = nearer), required by
            ``au_model="blendshape"`` (AUs, pose, gaze come from them); None otherwise.
        stream: the calling stream's session id ("" = unknown); the shared deployment counts
            the active streams from it to pick its batch wait.
    """

    crops: np.ndarray
    points01: np.ndarray | None
    saliency_mask: np.ndarray | None = None
    landmarks3d: np.ndarray | None = None
    stream: str = ""


@dataclasses.dataclass
class InferResult:
    """Per-frame result, rows in the request's face order.

    Attributes:
        probs: (N, E) float32 emotion probabilities over the analyzer's labels.
        saliency: (N, 6) float32 per-region saliency in [0, 1] (NaN rows: not computed), or None.
        au: (N, 12) float32 learned AU intensities, FACS 0–5, DISFA order; None when AUs are
            ``geometric`` (then the timeline builder estimates them).
        timings_ms: this frame's share of the batch's compute time in ms by step (``fer`` or
            ``fer+saliency``, ``au`` for the landmark heads, ``inference_cpu``).
        batch_faces: faces in the forward that served this frame.
        first_in_batch: True for exactly one request of each batched forward (so a caller can
            count batches, e.g. observe ``batch_faces`` once per forward).
        au_presence: (N, 12) uint8 0/1 (this frame's intensity >= 2.0), or None.
        pose: (N, 3) float32 head ``[yaw, pitch, roll]`` in degrees, or None.
        gaze: (N, 2) float32 ``[gaze_yaw, gaze_pitch]`` in degrees (head + eye-in-head from the
            iris points, camera frame, signs as ``pose``; uncalibrated), or None.
    """

    probs: np.ndarray
    saliency: np.ndarray | None
    au: np.ndarray | None
    timings_ms: dict[str, float]
    batch_faces: int
    first_in_batch: bool = False
    au_presence: np.ndarray | None = None
    pose: np.ndarray | None = None
    gaze: np.ndarray | None = None


def analyze_batch(analyzer: FaceAnalyzer, reqs: list[InferRequest]) -> list[InferResult]:
    """Concatenate the requests' faces, run one forward of each model, split back per request.

    Saliency rows of faces outside a request's ``saliency_mask`` are NaN (not computed). With
    ``au_model="blendshape"`` the landmark heads (blendshapes, AUs, presence, pose, gaze) run once
    over every face of the batch.

    Raises:
        ValueError: the analyzer needs ``landmarks3d`` and a request with faces has none.
    """
    sizes = [len(r.crops) for r in reqs]
    total = sum(sizes)
    if total == 0:
        empty = analyzer.analyze(np.zeros((0,) + tuple(analyzer.crop.size), np.uint8))
        return [InferResult(empty[0], empty[1], None, {"fer": 0.0}, 0, i == 0)
                for i in range(len(reqs))]
    live = [r for r in reqs if len(r.crops)]
    crops = np.concatenate([r.crops for r in live])
    want_sal = all(r.points01 is not None for r in live)
    pts = np.concatenate([r.points01 for r in live]) if want_sal else None
    mask = np.concatenate([np.ones(len(r.crops), bool) if r.saliency_mask is None
                           else np.asarray(r.saliency_mask, bool) for r in live])
    lm3 = None
    if analyzer.needs_landmarks3d:
        if any(r.landmarks3d is None for r in live):
            raise ValueError(f"au_model {analyzer.au_model!r} needs landmarks3d (N, 478, 3) in "
                             "every request: run the face-track stage with the same au_model")
        lm3 = np.concatenate([r.landmarks3d for r in live])
    t0, c0 = time.perf_counter(), time.thread_time()
    probs, sal, au = analyzer.analyze(crops, pts, mask)
    t1 = time.perf_counter()
    heads = None if lm3 is None else analyzer.analyze_landmarks(lm3)
    t2 = time.perf_counter()
    cpu = (time.thread_time() - c0) * 1000
    if heads is not None:
        au = heads.au
    out, i = [], 0
    key = "fer+saliency" if sal is not None and mask.any() else "fer"
    for n in sizes:
        share = n / total
        timings = {key: (t1 - t0) * 1000 * share, "inference_cpu": cpu * share}
        sl = slice(i, i + n)
        if heads is not None:
            timings["au"] = (t2 - t1) * 1000 * share
        out.append(InferResult(
            probs[sl], None if sal is None else sal[sl], None if au is None else au[sl],
            timings, total, not out,
            au_presence=None if heads is None else heads.au_presence[sl],
            pose=None if heads is None else heads.pose[sl],
            gaze=None if heads is None else heads.gaze[sl]))
        i += n
    return out


def warm_up(analyzer: FaceAnalyzer) -> None:
    """One forward on two blank faces (with saliency), so the first real batch does not pay for
    the allocator's and kernels' first use."""
    h, w = analyzer.crop.size
    shape = (2, h, w) if analyzer.crop.gray else (2, h, w, 3)
    analyzer.analyze(np.zeros(shape, np.uint8), np.full((2, 468, 2), 0.5, np.float32))
