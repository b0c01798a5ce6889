"""DSR-FAU: facial action unit intensity by heatmap regression, teacher and distilled student.

Source: Y. Fan, J. C. K. Lam, V. O. K. Li, "Distilling Region-Wise and Channel-Wise Deep
Structural Facial Relationships for FAU (DSR-FAU) Intensity Estimation", IEEE Transactions on
Affective Computing, 2021, doi:10.1109/TAFFC.2021.3129065 (method: heatmap regression of AU
intensities; a large teacher and a small student trained with feature-map, region-wise relation
and channel-wise relation distillation losses — see :mod:`models.losses_dsr_fau`). The
heatmap-regression set-up follows the lineage the paper builds on (DESIGN.md §2): ResNet-50
backbone, 256x256 input, 64x64 heatmaps, Gaussian sigma 2 px, two landmark-defined points per AU,
heatmap peak value = AU intensity (FACS 0-5). Re-implemented from these descriptions; no code was
copied.

Layout: AU point table and heatmap renderer/decoder -> :class:`HeatmapAUNet` -> factories
:func:`dsr_fau_teacher`, :func:`dsr_fau_student`.

Choices for details the sources leave open:
  * Head: three stride-2 transposed convs (4x4) from the stride-32 backbone map up to 64x64, then
    a 1x1 conv to one heatmap per AU ("simple baselines" style deconvolution head). Teacher head
    width 256, student head width 64.
  * Student: a ResNet-18 layout at half width (32/64/128/256 channels) with the same head shape;
    this puts it well under a quarter of the teacher's FLOPs (measured numbers in the report of
    :func:`models.profile.describe`) while keeping 64x64 features for distillation.
  * Decoder: per AU, the heatmap's maximum refined to sub-pixel precision with a log-parabola
    fit of the known Gaussian (see :func:`decode_heatmaps`); clamped to [0, 5].
  * Two heatmap Gaussians of one AU are combined by pixel-wise maximum (not sum), so the peak
    value equals the intensity even when the two points are close.
  * AU points from 68-point (iBUG/300-W) landmarks: :data:`AU_POINT_RULES` (our own table, each
    point the mean of a few landmarks placed on the muscle's visible effect).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affectstream.models._cnn_blocks import resnet_stage
from affectstream.models._labels import DISFA_AUS
from affectstream.models.registry import ModelCard, register_model

HEATMAP_SIGMA = 2.0
"""Gaussian sigma of the target heatmaps, in heatmap pixels."""

MAX_INTENSITY = 5.0
"""Top of the FACS intensity scale (A=1 ... E=5)."""

# Two points per AU; each point is the mean of the listed 0-based indices of the 68-point
# iBUG/300-W landmark scheme (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59,
# inner lips 60-67). First point on the image-left side where the AU is bilateral.
AU_POINT_RULES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "AU01": ((21,), (22,)),                  # inner brow raiser: inner brow ends
    "AU02": ((17, 18), (25, 26)),            # outer brow raiser: outer brow ends
    "AU04": ((19,), (24,)),                  # brow lowerer: brow centres
    "AU05": ((37, 38), (43, 44)),            # upper lid raiser: upper eyelids
    "AU06": ((1, 41, 48), (15, 46, 54)),     # cheek raiser: cheek centroid (contour, lid, corner)
    "AU09": ((29, 31), (29, 35)),            # nose wrinkler: sides of the nose
    "AU12": ((48,), (54,)),                  # lip corner puller: mouth corners
    "AU15": ((48, 5), (54, 11)),             # lip corner depressor: below the corners
    "AU17": ((58, 7), (56, 9)),              # chin raiser: chin boss
    "AU20": ((48, 4), (54, 12)),             # lip stretcher: lateral to the corners
    "AU25": ((62,), (66,)),                  # lips part: inner lip midpoints
    "AU26": ((57,), (8,)),                   # jaw drop: lower lip and chin
}


def au_points_from_landmarks(landmarks: torch.Tensor, input_size: int = 256,
                             heatmap_size: int = 64,
                             au_names: tuple[str, ...] = DISFA_AUS) -> torch.Tensor:
    """Heatmap-space AU points from 68-point landmarks.

    Args:
        landmarks: ``(B, 68, 2)`` float ``(x, y)`` in input-image pixels (pixel centres at
            integers) of the ``input_size`` x ``input_size`` face crop. (DISFA ships 66 points
            without the inner-lip corners 60 and 64: insert two columns to get 68 first.)
        input_size: side of the network input in pixels.
        heatmap_size: side of the heatmaps in pixels.
        au_names: which AUs, in output order (keys of :data:`AU_POINT_RULES`).

    Returns:
        ``(B, A, 2, 2)`` points ``(x, y)`` in heatmap pixels (pixel centres at integers).

    Raises:
        ValueError: wrong landmark shape or an AU without a rule.
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must have shape (B, 68, 2), got {tuple(landmarks.shape)}")
    missing = [a for a in au_names if a not in AU_POINT_RULES]
    if missing:
        raise ValueError(f"no point rule for {missing}; known: {sorted(AU_POINT_RULES)}")
    pts = []
    for a in au_names:
        pts.append(torch.stack([landmarks[:, list(ix)].mean(dim=1) for ix in AU_POINT_RULES[a]], 1))
    p = torch.stack(pts, dim=1)  # (B, A, 2, 2) input pixels
    scale = heatmap_size / input_size
    return (p + 0.5) * scale - 0.5


def render_au_heatmaps(points: torch.Tensor, intensity: torch.Tensor,
                       size: tuple[int, int] = (64, 64), sigma: float = HEATMAP_SIGMA) -> torch.Tensor:
    """Target heatmaps: one Gaussian of peak ``intensity`` at each AU point.

    ``H[b, a, y, x] = intensity[b, a] * max_p exp(-((x - px)^2 + (y - py)^2) / (2 sigma^2))``.

    Args:
        points: ``(B, A, P, 2)`` ``(x, y)`` in heatmap pixels (pixel centres at integers), e.g.
            from :func:`au_points_from_landmarks` (``P = 2``).
        intensity: ``(B, A)`` AU intensities on the FACS 0-5 scale.
        size: ``(H, W)`` of the heatmaps.
        sigma: Gaussian standard deviation in heatmap pixels.

    Returns:
        ``(B, A, H, W)`` float heatmaps (dtype of ``points``), peak value = intensity.
    """
    h, w = size
    ys = torch.arange(h, device=points.device, dtype=points.dtype)
    xs = torch.arange(w, device=points.device, dtype=points.dtype)
    dx2 = (xs.view(1, 1, 1, 1, w) - points[..., 0, None, None]) ** 2  # (B, A, P, 1, W)
    dy2 = (ys.view(1, 1, 1, h, 1) - points[..., 1, None, None]) ** 2  # (B, A, P, H, 1)
    g = torch.exp(-(dx2 + dy2) / (2 * sigma**2)).amax(dim=2)  # (B, A, H, W)
    return g * intensity[..., None, None].to(g.dtype)


def decode_heatmaps(heatmaps: torch.Tensor, sigma: float = HEATMAP_SIGMA,
                    max_intensity: float = MAX_INTENSITY, min_peak: float = 1e-3) -> torch.Tensor:
    """Per-AU intensity from heatmaps: sub-pixel-refined peak height of the known Gaussian.

    For a Gaussian of known ``sigma`` the log-values along x at the arg-max pixel and its two
    neighbours satisfy ``dx = sigma^2 (log h(+1) - log h(-1)) / 2`` (same for y), and the true peak
    is ``h(0) * exp((dx^2 + dy^2) / (2 sigma^2))``. The offsets are clamped to half a pixel
    (so the correction is at most 6.5 % at sigma 2 and noise cannot blow it up). Exact for
    heatmaps rendered by :func:`render_au_heatmaps` whose points are a few pixels apart and
    inside the map. Loop-free and traceable.

    Args:
        heatmaps: ``(B, A, H, W)`` float heatmaps.
        sigma: Gaussian sigma used for the targets, heatmap pixels.
        max_intensity: upper clamp (FACS 5).
        min_peak: peaks at or below this are decoded as intensity 0.

    Returns:
        ``(B, A)`` intensities in ``[0, max_intensity]``, dtype of ``heatmaps``.
    """
    b, a, h, w = heatmaps.shape
    peak, idx = heatmaps.reshape(b, a, h * w).max(dim=-1)
    iy = torch.div(idx, w, rounding_mode="floor")
    ix = idx - iy * w
    wp = w + 2
    padded = F.pad(heatmaps.reshape(b * a, 1, h, w), (1, 1, 1, 1), mode="replicate")
    padded = padded.reshape(b, a, (h + 2) * wp)
    centre = (iy + 1) * wp + (ix + 1)
    neigh = padded.gather(-1, torch.stack([centre - 1, centre + 1, centre - wp, centre + wp], -1))
    tiny = torch.finfo(heatmaps.dtype).tiny
    logn = torch.log(neigh.clamp(min=tiny))
    dx = (sigma**2 / 2 * (logn[..., 1] - logn[..., 0])).clamp(-0.5, 0.5)
    dy = (sigma**2 / 2 * (logn[..., 3] - logn[..., 2])).clamp(-0.5, 0.5)
    amp = peak * torch.exp((dx * dx + dy * dy) / (2 * sigma**2))
    amp = torch.where(peak > min_peak, amp, torch.zeros_like(amp))
    return amp.clamp(0.0, max_intensity)


class HeatmapAUNet(nn.Module):
    """ResNet trunk + deconvolution head regressing one intensity heatmap per AU.

    Shapes: input ``(B, 3, S, S)`` (S = 256 by the card; any multiple of 32 works) ->
    heatmaps ``(B, A, S/4, S/4)``.

    Args:
        block: ``"bottleneck"`` (ResNet-50 layout) or ``"basic"`` (ResNet-18 layout).
        stage_channels: output channels of the four stages.
        stage_blocks: blocks per stage.
        stem_channels: channels of the 7x7/2 stem conv.
        head_channels: width of the three transposed convs.
        num_aus: number of AU heatmaps.
    """

    def __init__(self, block: str, stage_channels: tuple[int, int, int, int],
                 stage_blocks: tuple[int, int, int, int], stem_channels: int = 64,
                 head_channels: int = 256, num_aus: int = len(DISFA_AUS)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        chans = (stem_channels,) + tuple(stage_channels)
        self.layer1 = resnet_stage(block, chans[0], chans[1], stage_blocks[0], 1)
        self.layer2 = resnet_stage(block, chans[1], chans[2], stage_blocks[1], 2)
        self.layer3 = resnet_stage(block, chans[2], chans[3], stage_blocks[2], 2)
        self.layer4 = resnet_stage(block, chans[3], chans[4], stage_blocks[3], 2)
        ups: list[nn.Module] = []
        cin = chans[4]
        for _ in range(3):
            ups += [nn.ConvTranspose2d(cin, head_channels, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True)]
            cin = head_channels
        self.head = nn.Sequential(*ups)
        self.final = nn.Conv2d(head_channels, num_aus, 1)
        self.feature_channels = head_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Regress AU heatmaps.

        Args:
            x: ``(B, 3, 256, 256)`` RGB face crop, [0, 1] then ImageNet mean/std.

        Returns:
            ``heatmaps`` ``(B, A, 64, 64)`` (peak value = intensity, FACS 0-5);
            ``au_intensity`` ``(B, A)`` in [0, 5] decoded by :func:`decode_heatmaps`;
            ``features`` ``(B, head_channels, 64, 64)`` head features (distillation target).
        """
        f = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        feats = self.head(f)
        heatmaps = self.final(feats)
        return {"heatmaps": heatmaps, "au_intensity": decode_heatmaps(heatmaps), "features": feats}


def _card(name: str, desc: str) -> ModelCard:
    return ModelCard(
        name=name,
        task="au",
        input_size=(256, 256),
        color="rgb",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        alignment="bbox",
        label_names=DISFA_AUS,
        paper="Fan, Lam, Li, Distilling Region-Wise and Channel-Wise Deep Structural Facial "
              "Relationships for FAU (DSR-FAU) Intensity Estimation, IEEE TAFFC 2021, "
              f"doi:10.1109/TAFFC.2021.3129065 ({desc})",
        licence="Apache-2.0 (architecture code of this project; no trained weights yet)",
        weights=None,
        extra={
            "output": "au_intensity",
            "output_shapes": {"heatmaps": "(B,12,64,64)", "au_intensity": "(B,12) FACS 0-5",
                        "features": "(B,C,64,64)"},
            "heatmap_size": (64, 64),
            "heatmap_sigma": HEATMAP_SIGMA,
            "intensity_range": (0.0, MAX_INTENSITY),
            "feature_layers": ("layer3", "layer4"),
        },
    )


@register_model(_card("dsr_fau_teacher", "teacher: ResNet-50 + deconv head"))
def dsr_fau_teacher(num_aus: int = len(DISFA_AUS)) -> HeatmapAUNet:
    """DSR-FAU teacher: ResNet-50 layout, 256-wide deconv head, 12 DISFA AU heatmaps."""
    return HeatmapAUNet("bottleneck", (256, 512, 1024, 2048), (3, 4, 6, 3), 64, 256, num_aus)


@register_model(_card("dsr_fau_student", "student: half-width ResNet-18 + 64-wide deconv head"))
def dsr_fau_student(num_aus: int = len(DISFA_AUS)) -> HeatmapAUNet:
    """DSR-FAU student: half-width ResNet-18 layout, 64-wide deconv head, 12 DISFA AU heatmaps."""
    return HeatmapAUNet("basic", (32, 64, 128, 256), (2, 2, 2, 2), 32, 64, num_aus)
