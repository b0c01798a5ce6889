"""Per-model training objectives and evaluation, selected by a stage's ``loss.kind``.

A task turns a batch (dict of tensors from :class:`training.augment.FaceTransform`) into a loss
with named parts, and into predictions for the evaluation metrics of :mod:`training.metrics`.
Model outputs are read by their documented keys (``logits``, ``logits_local``,
``logits_global``, ``side_logits``, ``gender``/``race``/``age``, ``heatmaps``, ``features``,
``au_intensity``, ``saliency``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectstream.training import metrics as M


def _f(t: torch.Tensor) -> float:
    return float(t.detach())


def _out(model: nn.Module, batch: dict, needs_landmarks: bool) -> Any:
    x = batch["image"]
    return model(x, batch["landmarks"]) if needs_landmarks else model(x)


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _ce(logits: torch.Tensor, batch: dict, smoothing: float = 0.0) -> torch.Tensor:
    logits = logits.float()
    if "soft_label" in batch:
        return -(batch["soft_label"] * F.log_softmax(logits, -1)).sum(-1).mean()
    return F.cross_entropy(logits, batch["label"], label_smoothing=smoothing)


class Task:
    """Base: classification metrics on ``logits``.

    Args:
        loss: the stage's loss spec.
        label_names: output class / AU names.
        needs_landmarks: the model's forward takes ``landmarks`` (AMP-Net).
    """

    kind = "classification"

    def __init__(self, loss: Any, label_names: Sequence[str], needs_landmarks: bool = False
                 ) -> None:
        self.spec = loss
        self.label_names = tuple(label_names)
        self.needs_landmarks = needs_landmarks

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules the task owns (saved in checkpoints, not exported)."""
        return {}

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and its named parts (floats, for logging)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict) -> dict[str, np.ndarray]:
        """Per-sample predictions and targets (numpy) for :meth:`metrics`."""
        out = _out(model, batch, self.needs_landmarks)
        pred = _logits(out).float().argmax(-1).cpu().numpy()
        return {"pred": pred, "true": batch["label"].cpu().numpy()}

    def metrics(self, acc: dict[str, np.ndarray]) -> dict[str, Any]:
        """Metrics over the concatenated predictions."""
        return M.classification_report(acc["true"], acc["pred"], self.label_names)

    default_metric = "accuracy"


class ClassifierTask(Task):
    """Plain cross-entropy on ``logits`` (saliency-guided FER, mini-Xception ...)."""

    def loss(self, model, batch):
        ce = _ce(_logits(_out(model, batch, self.needs_landmarks)), batch,
                 self.spec.label_smoothing)
        return ce, {"ce": _f(ce)}


class AmpNetTask(Task):
    """AMP-Net: ``w_local CE(logits_local) + w_global CE(logits_global)`` (Liu et al. 2022)."""

    def loss(self, model, batch):
        out = _out(model, batch, True)
        s = self.spec
        lo = _ce(out["logits_local"], batch, s.label_smoothing)
        gl = _ce(out["logits_global"], batch, s.label_smoothing)
        total = s.w_local * lo + s.w_global * gl
        return total, {"ce_local": _f(lo), "ce_global": _f(gl)}


class DsanTask(Task):
    """DSAN two-stage objectives (see :class:`training.recipes.DsanLoss`)."""

    def _demographic(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        att = batch.get("attributes")
        if att is None:
            raise ValueError("DSAN's demographic objective needs gender/race/age: set "
                             "data.attributes: true (RAF-DB manual annotations)")
        s = self.spec
        parts = {k: F.cross_entropy(out[k].float(), att[k]) for k in ("gender", "race", "age")}
        total = s.w_gender * parts["gender"] + s.w_race * parts["race"] + s.w_age * parts["age"]
        return total, {f"ce_{k}": _f(v) for k, v in parts.items()}

    def loss(self, model, batch):
        out = _out(model, batch, False)
        s = self.spec
        if s.objective == "demographic":
            return self._demographic(out, batch)
        ens = _ce(out["logits"], batch)
        sides = out["side_logits"]
        side = torch.stack([_ce(sides[:, k], batch) for k in range(sides.shape[1])]).mean()
        total = s.w_ensemble * ens + s.w_side * side
        logs = {"ce_ensemble": _f(ens), "ce_side": _f(side)}
        if s.w_demographic > 0:
            d, dl = self._demographic(out, batch)
            total = total + s.w_demographic * d
            logs |= dl
        return total, logs

    @torch.no_grad()
    def predict(self, model, batch):
        out = _out(model, batch, False)
        res = {"pred": out["logits"].float().argmax(-1).cpu().numpy(),
               "true": batch["label"].cpu().numpy()}
        att = batch.get("attributes")
        if att is not None:
            for k in ("gender", "race", "age"):
                res[f"{k}_pred"] = out[k].float().argmax(-1).cpu().numpy()
                res[f"{k}_true"] = att[k].cpu().numpy()
        return res

    def metrics(self, acc):
        rep = super().metrics(acc)
        for k in ("gender", "race", "age"):
            if f"{k}_pred" in acc:
                rep[f"{k}_accuracy"] = M.accuracy(acc[f"{k}_true"], acc[f"{k}_pred"])
        return rep


class HeatmapTask(Task):
    """AU intensity by heatmap regression (DSR-FAU lineage).

    Targets are rendered by :func:`models.dsr_fau.render_au_heatmaps` from the sample's AU points
    (crop pixels -> heatmap pixels) and intensities; the loss is the squared error summed over
    pixels and averaged over AU maps, skipping AUs whose intensity is NaN (not coded).
    """

    kind = "au"
    default_metric = "icc"

    def targets(self, batch: dict, hm_shape: tuple[int, int], in_size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        from affectstream.models.dsr_fau import render_au_heatmaps

        pts = batch["au_points"].float()
        scale = torch.tensor([hm_shape[1] / in_size[1], hm_shape[0] / in_size[0]],
                             dtype=pts.dtype, device=pts.device)
        pts = (pts + 0.5) * scale - 0.5
        inten = batch["au_intensity"].float()
        valid = torch.isfinite(inten)
        target = render_au_heatmaps(pts, torch.nan_to_num(inten, nan=0.0), hm_shape,
                                    self.spec.sigma)
        return target, valid

    def heatmap_loss(self, out: dict, batch: dict) -> torch.Tensor:
        hm = out["heatmaps"].float()
        target, valid = self.targets(batch, tuple(hm.shape[-2:]), tuple(batch["image"].shape[-2:]))
        per_map = (hm - target).pow(2).sum(dim=(2, 3))  # (B, A)
        w = valid.to(per_map.dtype)
        return (per_map * w).sum() / w.sum().clamp(min=1.0)

    def loss(self, model, batch):
        out = model(batch["image"])
        hl = self.heatmap_loss(out, batch)
        return hl, {"heatmap": _f(hl)}

    @torch.no_grad()
    def predict(self, model, batch):
        out = model(batch["image"])
        return {"pred": out["au_intensity"].float().cpu().numpy(),
                "true": batch["au_intensity"].cpu().numpy()}

    def metrics(self, acc):
        return M.au_report(acc["true"], acc["pred"], self.label_names)


class DistillTask(HeatmapTask):
    """DSR-FAU student: heatmap loss + the three distillation terms of
    :func:`models.losses_dsr_fau.dsr_fau_distillation_loss` against a frozen teacher.

    Args:
        teacher: the trained teacher (eval mode, no gradient).
        student_channels, teacher_channels: feature widths (the adapter maps one to the other).
    """

    def __init__(self, loss: Any, label_names: Sequence[str], teacher: nn.Module,
                 student_channels: int, teacher_channels: int) -> None:
        super().__init__(loss, label_names)
        from affectstream.models.losses_dsr_fau import feature_adapter

        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.adapter = feature_adapter(student_channels, teacher_channels)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"adapter": self.adapter}

    def loss(self, model, batch):
        from affectstream.models.losses_dsr_fau import dsr_fau_distillation_loss

        s = self.spec
        out = model(batch["image"])
        with torch.no_grad():
            t_out = self.teacher(batch["image"])
        hl = self.heatmap_loss(out, batch)
        regions = t_out["heatmaps"] if s.regions == "teacher_heatmaps" else (8, 8)
        with torch.autocast(batch["image"].device.type, enabled=False):
            kd = dsr_fau_distillation_loss(
                {k: v.float() for k, v in out.items()}, {k: v.float() for k, v in t_out.items()},
                self.adapter, s.w_feature, s.w_region, s.w_channel,
                regions.float() if isinstance(regions, torch.Tensor) else regions)
        total = s.w_heatmap * hl + kd["total"]
        return total, {"heatmap": _f(hl), "kd_feature": _f(kd["feature"]),
                       "kd_region": _f(kd["region"]), "kd_channel": _f(kd["channel"])}


class SaliencyTask(Task):
    """Saliency prediction trained with ``w_kld KLD - w_cc CC - w_nss NSS``."""

    kind = "saliency"
    default_metric = "cc"

    def loss(self, model, batch):
        from affectstream.models.saliency_cnn import multi_indicator_saliency_loss

        out = model(batch["image"])
        s = self.spec
        with torch.autocast(batch["image"].device.type, enabled=False):
            parts = multi_indicator_saliency_loss(out["saliency"].float(), batch["saliency_map"],
                                                  batch["fixations"], s.w_kld, s.w_cc, s.w_nss)
        return parts["total"], {k: _f(v) for k, v in parts.items() if k != "total"}

    @torch.no_grad()
    def predict(self, model, batch):
        out = model(batch["image"])
        return {"pred": out["saliency"][:, 0].float().cpu().numpy(),
                "map": batch["saliency_map"][:, 0].cpu().numpy(),
                "fix": batch["fixations"][:, 0].cpu().numpy()}

    def metrics(self, acc):
        return M.saliency_report(list(acc["pred"]), list(acc["map"]), list(acc["fix"]))


def make_task(loss: Any, label_names: Sequence[str], card: Any, teacher: nn.Module | None = None,
              student: nn.Module | None = None) -> Task:
    """The task for a stage's loss spec.

    Raises:
        ValueError: a distillation stage without a teacher.
    """
    needs_lm = "landmarks_in" in card.extra
    kind = loss.kind
    if kind == "ampnet":
        return AmpNetTask(loss, label_names, True)
    if kind == "ce":
        return ClassifierTask(loss, label_names, needs_lm)
    if kind == "dsan":
        return DsanTask(loss, label_names)
    if kind == "au_heatmap":
        return HeatmapTask(loss, label_names)
    if kind == "au_distill":
        if teacher is None or student is None:
            raise ValueError("au_distill needs a teacher checkpoint (recipe teacher.checkpoint "
                             "or --teacher)")
        return DistillTask(loss, label_names, teacher, student.feature_channels,
                           teacher.feature_channels)
    if kind == "saliency":
        return SaliencyTask(loss, label_names)
    raise ValueError(f"unknown loss kind {kind!r}")
