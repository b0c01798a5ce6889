"""Cost per face of each AU model on CPU, one torch thread (README "AU models").

    python docs/bench/au_model_cost.py [-o docs/bench/au_model_cost.json]

Real frames: the first 40 frames of WolfgangLanger_Pexels.mp4 (640x360, one face). Per face,
median over the frames after two warm-up calls, batch 1 (what the per-stream face-track stage
does); the landmark heads also at batch 16 (what the batched inference does with 16 faces):

* ``geometric``: FaceMesh (468 x 2, 192 px) in the face-track stage + the geometric estimator
  (per-track baseline) in the timeline builder;
* ``blendshape``: FaceMesh V2 (478 x 3, 256 px) in the face-track stage + blendshapes, AU mapping,
  head pose and gaze in the batched inference.

Plus the whole in-process pipeline (``affectstream.analyze_video``: detection, tracking,
landmarks, expression, saliency, AUs, smoothing) in ms per frame for each model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def _median_ms(fn, reps: list, warm: int = 2) -> float:
    for x in reps[:warm]:
        fn(x)
    ts = []
    for x in reps:
        t0 = time.perf_counter()
        fn(x)
        ts.append((time.perf_counter() - t0) * 1000)
    return float(np.median(ts))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output")
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import affectstream
    from affectstream.models.weights import artifact_path
    from affectstream.operators.au_geometric import GeometricAU
    from affectstream.operators.au_landmarks import LandmarkAnalyzer
    from affectstream.operators.decode import VideoSource
    from affectstream.operators.detection import FaceDetector
    from affectstream.operators.face_mesh_v2 import FaceMeshV2Landmarker
    from affectstream.operators.landmarks import FaceMeshLandmarker

    clip = artifact_path("WolfgangLanger_Pexels.mp4")
    frames = [f.image for f in VideoSource(str(clip), "cost", max_frames=args.frames)]
    dets = FaceDetector("full").detect(frames)
    items = [(f, d.bbox_xyxy[:1], d.keypoints[:1]) for f, d in zip(frames, dets) if len(d)]

    v1 = FaceMeshLandmarker(max_batch_size=16)
    v2 = FaceMeshV2Landmarker(max_batch_size=16, blendshapes=False)
    heads = LandmarkAnalyzer()
    geo = GeometricAU()
    out: dict = {"machine": f"{_cpu_name()}, {os.cpu_count()} cores", "torch_threads": 1,
                 "faces": len(items)}
    out["facemesh_v1_ms"] = _median_ms(lambda it: v1([it[0]], [it[1]], [it[2]]), items)
    out["facemesh_v2_ms"] = _median_ms(lambda it: v2([it[0]], [it[1]], [it[2]]), items)
    lm1 = np.concatenate([v1([f], [b], [k])[0].landmarks for f, b, k in items])
    lm2 = np.concatenate([v2([f], [b], [k])[0].landmarks for f, b, k in items])
    out["geometric_au_ms"] = _median_ms(
        lambda i: geo.update(np.array([1], np.int64), lm1[i:i + 1]), list(range(len(lm1))))
    out["landmark_heads_ms_batch1"] = _median_ms(lambda i: heads(lm2[i:i + 1]),
                                                 list(range(len(lm2))))
    n16 = [lm2[i:i + 16] for i in range(0, len(lm2) - 15, 8)]
    out["landmark_heads_ms_per_face_batch16"] = _median_ms(heads, n16) / 16
    out["geometric_total_ms"] = out["facemesh_v1_ms"] + out["geometric_au_ms"]
    out["blendshape_total_ms"] = out["facemesh_v2_ms"] + out["landmark_heads_ms_batch1"]
    for model in ("geometric", "blendshape"):
        affectstream.analyze_video(clip, max_frames=4, au_model=model)  # warm
        t0 = time.perf_counter()
        df = affectstream.analyze_video(clip, max_frames=args.frames, au_model=model)
        out[f"pipeline_{model}_ms_per_frame"] = (time.perf_counter() - t0) * 1000 / args.frames
        out[f"pipeline_{model}_rows"] = len(df)
    out["load_avg_1min_at_end"] = os.getloadavg()[0]  # other jobs share these 2 cores
    out = {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
