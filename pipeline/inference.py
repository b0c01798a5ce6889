"""The inference stage as a Ray Serve deployment shared by every stream.

One request = one frame's face crops (DESIGN §4: a Serve call per single face costs ~4 ms here).
``@serve.batch`` gathers requests of many frames and streams into one forward pass;
``max_batch_size`` (requests) and ``batch_wait_timeout_s`` are tunable live via ``reconfigure``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
from ray import serve

from affectstream.operators.analyze import FaceAnalyzer


@dataclasses.dataclass
class InferRequest:
    """Crops of one frame: (N,H,W[,3]) uint8, FaceMesh points in crop coords (N,468,2) in [0,1]."""

    crops: np.ndarray
    points01: np.ndarray | None


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
    """Concatenate the requests' crops, run one forward, split back per request."""
    sizes = [len(r.crops) for r in reqs]
    total = sum(sizes)
    if total == 0:
        empty = analyzer.analyze(np.zeros((0,) + tuple(analyzer.crop.size), np.uint8))
        return [InferResult(empty[0], empty[1], None, {"fer": 0.0}, 0, i == 0)
                for i in range(len(reqs))]
    crops = np.concatenate([r.crops for r in reqs if len(r.crops)])
    want_sal = all(r.points01 is not None for r in reqs if len(r.crops))
    pts = np.concatenate([r.points01 for r in reqs if len(r.crops)]) if want_sal else None
    t0 = time.perf_counter()
    probs, sal, au = analyzer.analyze(crops, pts)
    dt = (time.perf_counter() - t0) * 1000
    out, i = [], 0
    key = "fer+saliency" if sal is not None else "fer"
    for n in sizes:
        out.append(InferResult(probs[i:i + n], None if sal is None else sal[i:i + n],
                               None if au is None else au[i:i + n], {key: dt * n / total}, total,
                               not out))
        i += n
    return out


@serve.deployment(name="Inference", ray_actor_options={"num_cpus": 0})
class Inference:
    """Batched FER / AU / saliency inference (Serve deployment).

    Args:
        fer_model, saliency, au_model, device, half: see :class:`operators.analyze.FaceAnalyzer`.
        torch_threads: intra-op threads (0 = torch default).
        max_batch_size: requests (frames) per batch.
        batch_wait_timeout_s: wait to fill a batch, seconds.
    """

    def __init__(self, fer_model: str = "mini_xception", saliency: str = "gradcam",
                 au_model: str = "geometric", device: str = "auto", half: bool = False,
                 torch_threads: int = 0, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.005) -> None:
        import torch

        from affectstream.pipeline.ray_net import serve_replica_on_loopback

        serve_replica_on_loopback()

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.analyzer = FaceAnalyzer(fer_model, saliency, au_model, device, half)
        self._apply(max_batch_size, batch_wait_timeout_s)
        h, w = self.analyzer.crop.size  # warm-up: the first real batch should not pay for it
        shape = (2, h, w) if self.analyzer.crop.gray else (2, h, w, 3)
        self.analyzer.analyze(np.zeros(shape, np.uint8), np.full((2, 468, 2), 0.5, np.float32))

    def _apply(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.infer.set_max_batch_size(max_batch_size)
        self.infer.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning: ``{"max_batch_size": int, "batch_wait_timeout_s": float}``."""
        self._apply(int(user_config.get("max_batch_size", 16)),
                    float(user_config.get("batch_wait_timeout_s", 0.005)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def infer(self, reqs: list[InferRequest]) -> list[InferResult]:
        return await asyncio.to_thread(analyze_batch, self.analyzer, reqs)

    async def __call__(self, req: InferRequest) -> InferResult:
        return await self.infer(req)
