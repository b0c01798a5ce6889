"""DSR-FAU knowledge-distillation losses (pure torch; imported by ``training/``).

Source: Y. Fan, J. C. K. Lam, V. O. K. Li, "Distilling Region-Wise and Channel-Wise Deep
Structural Facial Relationships for FAU (DSR-FAU) Intensity Estimation", IEEE TAFFC 2021,
doi:10.1109/TAFFC.2021.3129065. The paper's three distillation terms, as described in its
abstract: (1) a feature-map-level loss so that student and teacher share similar feature
distributions; (2) a region-wise relation loss on the structural correlations across facial
regions; (3) a channel-wise relation loss on the implicit AU co-occurrence dependencies. The exact
formulas below are our choices (written in each docstring); they share three properties the
tests check: each is 0 when student and teacher inputs are identical, > 0 otherwise (for generic
inputs), and gradients reach only the student (teacher inputs are detached).

Typical use with :mod:`models.dsr_fau` outputs ``s`` (student) and ``t`` (teacher)::

    adapter = feature_adapter(student.feature_channels, teacher.feature_channels)
    parts = dsr_fau_distillation_loss(s, t, adapter)
    loss = mse(s["heatmaps"], target) + parts["total"]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feature_adapter(student_channels: int, teacher_channels: int) -> nn.Module:
    """1x1 conv + BN mapping student features to the teacher's channel count (train-time only).

    Shapes: ``(B, student_channels, H, W) -> (B, teacher_channels, H, W)``.
    """
    return nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
                         nn.BatchNorm2d(teacher_channels))


def _match_spatial(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] != ref.shape[-2:]:
        x = F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
    return x


def feature_map_distillation_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
                                  normalize: bool = True) -> torch.Tensor:
    """Feature-map distillation.

    ``L_fm = mean_b || phi(F_s^b) - phi(F_t^b) ||_2^2`` where ``phi`` divides each sample's map by
    its L2 norm over (C, H, W) when ``normalize`` (so the loss matches *distributions* rather than
    scales, and lies in [0, 4]), and is the identity otherwise (then the result is divided by
    ``C*H*W``, i.e. a plain MSE).

    Args:
        student_feat: ``(B, C, H, W)`` student features, already mapped to the teacher's ``C``
            (e.g. by :func:`feature_adapter`); resized bilinearly if ``H, W`` differ.
        teacher_feat: ``(B, C, H', W')`` teacher features (detached here).
        normalize: per-sample L2 normalisation before the comparison.

    Returns:
        Scalar loss.

    Raises:
        ValueError: channel counts differ.
    """
    t = teacher_feat.detach()
    if student_feat.shape[1] != t.shape[1]:
        raise ValueError(
            f"student has {student_feat.shape[1]} channels, teacher {t.shape[1]}: map the student "
            "features with feature_adapter(student_channels, teacher_channels) first")
    s = _match_spatial(student_feat, t).flatten(1)
    t = t.flatten(1)
    if normalize:
        s = F.normalize(s, dim=1)
        t = F.normalize(t, dim=1)
        return (s - t).pow(2).sum(dim=1).mean()
    return F.mse_loss(s, t)


def region_features(feat: torch.Tensor, regions: torch.Tensor | tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Pool a feature map into one vector per facial region.

    Args:
        feat: ``(B, C, H, W)``.
        regions: a grid ``(gh, gw)`` (adaptive average pooling into ``gh*gw`` cells), or a
            ``(B, R, H', W')`` non-negative weight map per region (e.g. the teacher's AU heatmaps
            as soft masks), giving the weighted average ``sum(m f) / sum(m)`` per region.

    Returns:
        ``(B, R, C)`` region descriptors.
    """
    if isinstance(regions, torch.Tensor):
        m = _match_spatial(regions.detach().clamp(min=0).to(feat.dtype), feat)
        num = torch.einsum("brhw,bchw->brc", m, feat)
        return num / (m.sum(dim=(2, 3)).unsqueeze(-1) + 1e-6)
    return F.adaptive_avg_pool2d(feat, regions).flatten(2).transpose(1, 2)


def _cosine_relation(v: torch.Tensor) -> torch.Tensor:
    """``(B, N, D) -> (B, N, N)`` cosine similarities between the N rows."""
    v = F.normalize(v, dim=-1, eps=1e-8)
    return v @ v.transpose(1, 2)


def region_relation_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
                         regions: torch.Tensor | tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Region-wise relation distillation (structural correlation across facial regions).

    With ``v_r`` the descriptor of region ``r`` (:func:`region_features`) and
    ``R_ij = cos(v_i, v_j)`` the region-relation matrix of a network,
    ``L_region = mean_{b,i,j} (R_s^b[i, j] - R_t^b[i, j])^2``.

    The relation matrices are ``R x R`` whatever the channel counts, so the student's raw
    features can be compared with the teacher's without an adapter.

    Args:
        student_feat: ``(B, C_s, H, W)``.
        teacher_feat: ``(B, C_t, H', W')`` (detached here).
        regions: grid ``(gh, gw)`` or ``(B, R, h, w)`` soft region masks (see
            :func:`region_features`).

    Returns:
        Scalar loss in [0, 4].
    """
    t = teacher_feat.detach()
    rs = _cosine_relation(region_features(student_feat, regions))
    rt = _cosine_relation(region_features(t, regions))
    return (rs - rt).pow(2).mean()


def channel_relation_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """Channel-wise relation distillation (implicit AU co-occurrence).

    With ``h_a`` the flattened map of channel ``a`` (one channel per AU for heatmaps) and
    ``G_ab = cos(h_a, h_b)`` the channel-relation matrix,
    ``L_channel = mean_{b,a,a'} (G_s^b[a, a'] - G_t^b[a, a'])^2``.

    Args:
        student_maps: ``(B, A, H, W)`` (e.g. predicted AU heatmaps).
        teacher_maps: ``(B, A, H', W')`` with the same channel meaning (detached here).

    Returns:
        Scalar loss in [0, 4].

    Raises:
        ValueError: channel counts differ.
    """
    t = teacher_maps.detach()
    if student_maps.shape[1] != t.shape[1]:
        raise ValueError(f"channel counts differ: student {student_maps.shape[1]}, teacher {t.shape[1]}")
    s = _match_spatial(student_maps, t)
    return (_cosine_relation(s.flatten(2)) - _cosine_relation(t.flatten(2))).pow(2).mean()


def dsr_fau_distillation_loss(student_out: dict[str, torch.Tensor],
                              teacher_out: dict[str, torch.Tensor],
                              adapter: nn.Module | None = None, w_feature: float = 1.0,
                              w_region: float = 1.0, w_channel: float = 1.0,
                              regions: torch.Tensor | tuple[int, int] = (8, 8)) -> dict[str, torch.Tensor]:
    """The three DSR-FAU distillation terms and their weighted sum.

    ``total = w_feature * L_fm(adapter(F_s), F_t) + w_region * L_region(F_s, F_t)
    + w_channel * L_channel(H_s, H_t)`` with ``F`` the ``"features"`` and ``H`` the
    ``"heatmaps"`` outputs of :class:`models.dsr_fau.HeatmapAUNet`. The heatmap regression loss
    against the ground truth is not included.

    Args:
        student_out: student forward output.
        teacher_out: teacher forward output (detached inside the terms).
        adapter: maps student feature channels to teacher's (required when they differ).
        w_feature: weight of the feature-map term.
        w_region: weight of the region-relation term.
        w_channel: weight of the channel-relation term.
        regions: region definition for the region term (see :func:`region_features`).

    Returns:
        ``{"feature", "region", "channel", "total"}`` scalar tensors.
    """
    fs = student_out["features"]
    ft = teacher_out["features"]
    fs_adapted = adapter(fs) if adapter is not None else fs
    parts = {
        "feature": feature_map_distillation_loss(fs_adapted, ft),
        "region": region_relation_loss(fs, ft, regions),
        "channel": channel_relation_loss(student_out["heatmaps"], teacher_out["heatmaps"]),
    }
    parts["total"] = (w_feature * parts["feature"] + w_region * parts["region"]
                      + w_channel * parts["channel"])
    return parts
