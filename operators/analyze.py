"""Batched inference adapters: expression (FER), learned AU models, saliency, and (with
``au_model="blendshape"``) AUs, head pose and gaze from landmarks.

The expression model is any registered ``task="expression"`` model or a trained checkpoint; its
:class:`models.ModelCard` decides the crop (size, colour, alignment) and normalisation. Output
probabilities are reported under the canonical labels the model declares (DESIGN §4).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from affectstream.models.registry import ModelCard, create_model, get_card
from affectstream.operators.landmarks import five_point
from affectstream.operators.records import DISFA_AUS, EMOTIONS, FACE_REGIONS, LANDMARK_AU_MODELS
from affectstream.operators.saliency import grad_cam, region_summary

if TYPE_CHECKING:
    from affectstream.operators.au_landmarks import LandmarkHeads


def load_model(spec: str) -> torch.nn.Module:
    """A registry id (``mini_xception``) or a checkpoint path (``runs/x/best.pt``) -> model with
    ``model.card``.

    Raises:
        KeyError: unknown registry id (lists known ones).
        FileNotFoundError: a path that does not exist.
    """
    if spec.endswith((".pt", ".pth")) or Path(spec).exists():
        from affectstream.models.checkpoint import load_checkpoint  # trained checkpoints carry their card

        model, _ = load_checkpoint(Path(spec))
        return model.eval()
    return create_model(spec)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """How the face-track stage must cut crops for a model: size (H, W), gray or colour,
    alignment (``bbox`` or ``5pt``), bbox enlargement."""

    size: tuple[int, int]
    gray: bool
    alignment: str
    scale: float = 1.0

    @staticmethod
    def from_card(card: ModelCard) -> CropSpec:
        return CropSpec(tuple(card.input_size), card.color == "gray", card.alignment,
                        float(card.extra.get("crop_scale", 1.0)))


class FaceAnalyzer:
    """Expression probabilities, optional learned AU intensities and Grad-CAM saliency.

    Args:
        fer_model: registry id or checkpoint path of an expression model.
        saliency: ``"gradcam"`` or ``"off"``.
        au_model: ``"blendshape"`` (AUs, presence, head pose and gaze from the FaceMesh V2
            landmarks each request carries: :meth:`analyze_landmarks`), ``"geometric"``
            (computed elsewhere from landmarks; nothing here) or a registry id / checkpoint of an
            AU model returning (B, 12) intensities 0–5 (DISFA order) from the crops.
        device: ``auto``/``cpu``/``cuda[:N]``.
        half: fp16 on CUDA.
    """

    def __init__(self, fer_model: str = "mini_xception", saliency: str = "gradcam",
                 au_model: str = "geometric", device: str = "auto", half: bool = False) -> None:
        self.device = resolve_device(device)
        self.half = half and self.device.type == "cuda"
        # channels-last: 1x1 convs become one matrix product (models._layers.Pointwise) and
        # pooling runs on contiguous channels (mini-Xception batch 1: 7.1 -> 5.6 ms CPU/face)
        self.fer = load_model(fer_model).to(self.device, memory_format=torch.channels_last)
        if hasattr(self.fer, "fold_batchnorm"):  # inference only: conv + BN as one conv
            self.fer.eval().fold_batchnorm()
        self.card: ModelCard = self.fer.card
        if self.card.task != "expression":
            raise ValueError(f"{fer_model} is a {self.card.task} model, not an expression model")
        self.labels = tuple(self.card.label_names)
        bad = set(self.labels) - set(EMOTIONS)
        if bad:
            raise ValueError(f"{fer_model} declares non-canonical labels {sorted(bad)}")
        self.crop = CropSpec.from_card(self.card)
        self.saliency = saliency != "off" and (hasattr(self.fer, "cam_layer")
                                               or "saliency_output" in self.card.extra)
        self.au_model = au_model
        self.au = None if au_model in LANDMARK_AU_MODELS else load_model(au_model).to(self.device)
        self.landmark_heads = None
        if au_model == "blendshape":
            from affectstream.operators.au_landmarks import LandmarkAnalyzer

            self.landmark_heads = LandmarkAnalyzer(self.device)
        self.au_names = DISFA_AUS
        if self.half:
            self.fer.half()
            if self.au is not None:
                self.au.half()
        mean = torch.tensor(self.card.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.card.std, dtype=torch.float32).view(1, -1, 1, 1)
        self._mean, self._std = mean.to(self.device), std.to(self.device)

    @staticmethod
    def card_for(fer_model: str) -> ModelCard:
        """The card of ``fer_model`` without building it (for crop preparation elsewhere)."""
        if fer_model.endswith((".pt", ".pth")):
            return load_model(fer_model).card
        return get_card(fer_model)

    def _tensor(self, crops: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(crops))
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        return x.half() if self.half else x

    def analyze(self, crops: np.ndarray, points01: np.ndarray | None = None,
                saliency_mask: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Run the models on a batch of crops (faces of one or many frames).

        Args:
            crops: (N, H, W) uint8 gray or (N, H, W, 3) uint8 RGB, prepared per :attr:`crop`.
            points01: (N, 468, 2) FaceMesh points in crop coordinates in [0, 1], needed for the
                saliency region summary; None skips saliency.
            saliency_mask: (N,) bool, faces whose saliency is computed (Grad-CAM costs a
                backward pass); the other rows come back NaN. None = every face.

        Returns:
            (emotion probs (N, E) float32 over :attr:`labels`,
             saliency per region (N, 6) float32 in [0, 1] or None,
             AU intensities (N, 12) float32 0–5 or None when AUs are geometric).
        """
        n = len(crops)
        if n == 0:
            return (np.zeros((0, len(self.labels)), np.float32),
                    None if not self.saliency else np.zeros((0, len(FACE_REGIONS)), np.float32),
                    None)
        x = self._tensor(crops)
        extra = self.card.extra
        args: tuple = ()
        if extra.get("landmarks_in"):  # e.g. AMP-Net: 5 points in crop pixels
            if points01 is None:
                raise ValueError(f"{self.card.name} needs landmarks (points01)")
            h, w = self.crop.size
            lm5 = five_point(points01 * np.array([w, h], np.float32))
            args = (torch.from_numpy(lm5.astype(np.float32)).to(self.device, x.dtype),)

        def logits_of(out: object) -> torch.Tensor:
            return out[extra["output"]] if isinstance(out, dict) else out  # type: ignore[index]

        sal = None
        mask = np.ones(n, bool) if saliency_mask is None else np.asarray(saliency_mask, bool)
        if self.saliency and points01 is not None and hasattr(self.fer, "cam_layer") and mask.all():
            logits, cam = grad_cam(lambda inp: logits_of(self.fer(inp, *args)),
                                   self.fer.cam_layer, x)
            sal = region_summary(cam.float().cpu().numpy(), points01)
        elif self.saliency and points01 is not None and hasattr(self.fer, "cam_layer"):
            with torch.inference_mode():
                logits = logits_of(self.fer(x, *args))
            sal = np.full((n, len(FACE_REGIONS)), np.nan, np.float32)
            idx = np.flatnonzero(mask)
            if len(idx):
                sub = tuple(a[torch.from_numpy(idx).to(a.device)] for a in args)
                _, cam = grad_cam(lambda inp: logits_of(self.fer(inp, *sub)), self.fer.cam_layer,
                                  x[torch.from_numpy(idx).to(x.device)])
                sal[idx] = region_summary(cam.float().cpu().numpy(), points01[idx])
        else:
            with torch.inference_mode():
                out = self.fer(x, *args)
            logits = logits_of(out)
            key = extra.get("saliency_output")
            if self.saliency and points01 is not None and key and isinstance(out, dict):
                sal = region_summary(out[key][:, 0].float().cpu().numpy(), points01)
        probs = torch.softmax(logits.float(), -1).cpu().numpy().astype(np.float32)
        au = None
        if self.au is not None:
            with torch.inference_mode():
                au = self._au_forward(crops)
        return probs, sal, au

    @property
    def needs_landmarks3d(self) -> bool:
        """True when requests must carry FaceMesh V2 landmarks (``au_model="blendshape"``)."""
        return self.landmark_heads is not None

    def analyze_landmarks(self, landmarks3d: np.ndarray) -> LandmarkHeads:
        """AUs, AU presence, head pose and gaze of N faces (``au_model="blendshape"``).

        Args:
            landmarks3d: (N, 478, 3) float32 FaceMesh V2 landmarks, frame pixels (z same scale).

        Raises:
            ValueError: this analyzer's AU model is not ``blendshape``, or a bad shape.
        """
        if self.landmark_heads is None:
            raise ValueError(f"au_model {self.au_model!r} takes no landmarks; use 'blendshape'")
        return self.landmark_heads(landmarks3d)

    def _au_forward(self, crops: np.ndarray) -> np.ndarray:
        # A learned AU model gets the same square face crop, resized to its own input size and
        # colour, normalised with its own card (bbox-aligned models only).
        card = self.au.card
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).float().div_(255.0)
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        want = 1 if card.color == "gray" else 3
        if x.shape[1] != want:
            x = x.mean(1, keepdim=True) if want == 1 else x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=tuple(card.input_size), mode="bilinear",
                                            align_corners=False)
        m = torch.tensor(card.mean, device=self.device).view(1, -1, 1, 1)
        s = torch.tensor(card.std, device=self.device).view(1, -1, 1, 1)
        x = (x - m) / s
        out = self.au(x.half() if self.half else x)
        if isinstance(out, dict):  # e.g. DSR-FAU: {"heatmaps", "au_intensity", "features"}
            out = out[card.extra.get("output", "au_intensity")]
        return out.float().clamp(0, 5).cpu().numpy().astype(np.float32)
