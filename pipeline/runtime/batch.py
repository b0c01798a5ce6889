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
    """Crops of one frame: (N,H,W[,3]) uint8, FaceMesh points in crop coords (N,468,2) in [0,1],
    and ``saliency_mask`` (N,) bool: faces that need a fresh saliency map (None = all)."""

    crops: np.ndarray
    points01: np.ndarray | None
    saliency_mask: np.ndarray | None = None


@dataclasses.dataclass
class InferResult:
    """Per-frame result: emotion probs (N,E), saliency (N,6) or None, learned AUs (N,12) or None,
    and this frame's share of the batch's compute time in ms by step (``fer``, ``saliency``).
    ``first_in_batch`` is True for exactly one request of each batched forward (so a caller can
    count batches, e.g. observe ``batch_faces`` once per forward)."""

    probs: np.ndarray
    saliency: np.ndarray | None
    au: np.ndarray | None
    timings_ms: dict[str, float]
    batch_faces: int
    first_in_batch: bool = False


def analyze_batch(analyzer: FaceAnalyzer, reqs: list[InferRequest]) -> list[InferResult]:
    """Concatenate the requests' crops, run one forward, split back per request.

    Saliency rows of faces outside a request's ``saliency_mask`` are NaN (not computed).
    """
    sizes = [len(r.crops) for r in reqs]
    total = sum(sizes)
    if total == 0:
        empty = analyzer.analyze(np.zeros((0,) + tuple(analyzer.crop.size), np.uint8))
        return [InferResult(empty[0], empty[1], None, {"fer": 0.0}, 0, i == 0)
                for i in range(len(reqs))]
    crops = np.concatenate([r.crops for r in reqs if len(r.crops)])
    want_sal = all(r.points01 is not None for r in reqs if len(r.crops))
    pts = np.concatenate([r.points01 for r in reqs if len(r.crops)]) if want_sal else None
    mask = np.concatenate([np.ones(len(r.crops), bool) if r.saliency_mask is None
                           else np.asarray(r.saliency_mask, bool) for r in reqs if len(r.crops)])
    t0, c0 = time.perf_counter(), time.thread_time()
    probs, sal, au = analyzer.analyze(crops, pts, mask)
    dt = (time.perf_counter() - t0) * 1000
    cpu = (time.thread_time() - c0) * 1000
    out, i = [], 0
    key = "fer+saliency" if sal is not None and mask.any() else "fer"
    for n in sizes:
        out.append(InferResult(probs[i:i + n], None if sal is None else sal[i:i + n],
                               None if au is None else au[i:i + n], {key: dt * n / total, "inference_cpu": cpu * n / total}, total,
                               not out))
        i += n
    return out
