"""Training recipes: frozen pydantic v2 schemas with ``extra="forbid"`` (YAML in configs/train/).

A recipe names a registered model, a dataset in its public format, the augmentation, one or more
training *stages* (each with its loss, optimiser, schedule and epochs; DSAN's two-stage scheme is
two stages) and the run settings. Defaults live here; YAML files only override. Unknown keys are
an error, so a typo never silently becomes a default.

Loading: :func:`load_recipe` (YAML path) and :meth:`Recipe.with_overrides` (dotted keys, e.g.
``{"data.max_train_samples": 16, "stages.0.epochs": 1}``; values re-validated).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------- model


class InitSpec(_Cfg):
    """Weights loaded into the model (or one of its sub-modules) before training."""

    checkpoint: Path = Field(description="A training checkpoint (.pt) or a plain state_dict file.")
    prefix: str = Field("", description="Sub-module to load into, e.g. 'saliency.' for the "
                                        "saliency net inside saliency_fer; '' = whole model.")
    freeze: bool = Field(False, description="Keep the loaded parameters fixed (no gradient).")


class ModelSpec(_Cfg):
    """Which registered model to train."""

    name: str = Field(description="Registry id (models.list_models()).")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="Factory keyword arguments (num_classes is set "
                                               "from the dataset when the factory takes it).")
    input_size: tuple[int, int] | None = Field(
        None, description="Override of the card's (H, W) input size, for tiny CI runs; only "
                          "sizes the architecture accepts.")
    init: InitSpec | None = None


class TeacherSpec(_Cfg):
    """Frozen teacher for knowledge distillation."""

    checkpoint: Path | None = Field(None, description="Trained teacher (.pt); `--teacher` sets it.")


# -------------------------------------------------------------------------------------- data


class _DataBase(_Cfg):
    geometry: Literal["pipeline", "dataset", "none"] = Field(
        "pipeline", description="Where face box / landmarks come from: the serving pipeline's "
                                "detector + FaceMesh (identical crops in serving), the dataset's "
                                "own annotations, or none (alignment 'none').")
    geometry_fallback: Literal["drop", "dataset"] = Field(
        "drop", description="When the pipeline finds no face: drop the image, or fall back to "
                            "the dataset's own annotations.")
    detector: Literal["short", "full"] = Field("short", description="BlazeFace model for "
                                                                     "geometry='pipeline'.")
    alignment: Literal["card", "5pt", "bbox", "none"] = Field(
        "card", description="Crop alignment; 'card' = the model card's (as serving).")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N "
                                                                  "training samples.")
    max_eval_samples: int | None = Field(None, ge=1, description="Use only the first N "
                                                                 "evaluation samples.")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")


class RafDBData(_DataBase):
    """RAF-DB basic (training.datasets.rafdb)."""

    dataset: Literal["rafdb"] = "rafdb"
    image: Literal["aligned", "original"] = "original"
    manual_landmarks: bool = Field(True, description="Read Annotation/manual (needed for "
                                                     "geometry 'dataset'/fallback, image "
                                                     "'original').")
    attributes: bool = Field(False, description="Read gender/race/age (DSAN stage 1).")
    train_split: Literal["train", "test"] = "train"
    eval_split: Literal["train", "test"] = "test"


class AffectNetData(_DataBase):
    """AffectNet-7/8 (training.datasets.affectnet)."""

    dataset: Literal["affectnet"] = "affectnet"
    classes: Literal[7, 8] = 7
    train_split: Literal["train", "val"] = "train"
    eval_split: Literal["train", "val"] = "val"


class Fer2013Data(_DataBase):
    """FER2013 (training.datasets.fer2013); 48x48 pre-cropped faces."""

    dataset: Literal["fer2013"] = "fer2013"
    geometry: Literal["pipeline", "dataset", "none"] = "none"
    alignment: Literal["card", "5pt", "bbox", "none"] = "none"
    train_split: Literal["train", "val", "test"] = "train"
    eval_split: Literal["train", "val", "test"] = "test"


class FerPlusData(Fer2013Data):
    """FERPlus labels on FER2013 images."""

    dataset: Literal["ferplus"] = "ferplus"  # type: ignore[assignment]
    label_mode: Literal["majority", "probability"] = "majority"


class CKPlusData(_DataBase):
    """CK+ (training.datasets.ckplus)."""

    dataset: Literal["ckplus"] = "ckplus"
    fold: int = Field(1, ge=1)
    n_folds: int = Field(10, ge=2)
    peak_frames: int = Field(3, ge=1)
    include_neutral: bool = False


class DisfaData(_DataBase):
    """DISFA (training.datasets.disfa)."""

    dataset: Literal["disfa"] = "disfa"
    fold: int = Field(1, ge=1, le=3)
    camera: Literal["left", "right"] = "left"
    frame_step: int = Field(1, ge=1, description="Every n-th labelled frame.")
    eval_frame_step: int = Field(1, ge=1)
    frames_dir: Path | None = Field(None, description="Frames extracted by "
                                                      "affectstream.training.datasets.disfa.extract_frames.")


class BP4DData(_DataBase):
    """BP4D / FERA 2015 intensity (training.datasets.bp4d)."""

    dataset: Literal["bp4d"] = "bp4d"
    frame_step: int = Field(1, ge=1)
    eval_frame_step: int = Field(1, ge=1)
    train_split: Literal["train", "dev", "all"] = "train"
    eval_split: Literal["train", "dev", "all"] = "dev"


class Cat2000Data(_DataBase):
    """CAT2000 saliency (training.datasets.cat2000); whole scenes, no face geometry."""

    dataset: Literal["cat2000"] = "cat2000"
    geometry: Literal["pipeline", "dataset", "none"] = "none"
    alignment: Literal["card", "5pt", "bbox", "none"] = "none"
    val_per_category: int = Field(10, ge=0)


DataSpec = Annotated[
    RafDBData | AffectNetData | Fer2013Data | FerPlusData | CKPlusData | DisfaData | BP4DData
    | Cat2000Data,
    Field(discriminator="dataset"),
]


# --------------------------------------------------------------------------------- augmentation


class AugmentSpec(_Cfg):
    """Training augmentation ranges (training.augment.AugmentConfig)."""

    rotation_deg: float = Field(10.0, ge=0, le=180, description="Max rotation, degrees.")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Zoom range (> 1 zooms in).")
    shift_frac: float = Field(0.05, ge=0, le=0.5, description="Max shift, fraction of the side.")
    flip_p: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability.")
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)
    saturation: float = Field(0.2, ge=0, le=1)

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("scale must satisfy 0 < min <= max")
        return v


# -------------------------------------------------------------------------------------- losses


class AmpNetLoss(_Cfg):
    """AMP-Net: ``w_local * CE(logits_local) + w_global * CE(logits_global)`` (paper: 0.5/0.5)."""

    kind: Literal["ampnet"] = "ampnet"
    w_local: float = Field(0.5, ge=0)
    w_global: float = Field(0.5, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class ClassifierLoss(_Cfg):
    """Cross-entropy on ``logits`` (soft labels when the dataset gives them)."""

    kind: Literal["ce"] = "ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class DsanLoss(_Cfg):
    """DSAN, one stage of the two-stage scheme.

    ``objective="demographic"``: ``CE(gender) + CE(race) + CE(age)`` (weights below);
    ``objective="expression"``: ``w_ensemble CE(logits) + w_side mean_k CE(side_logits_k)``
    (deep supervision of every side output) plus ``w_demographic`` times the demographic term.
    """

    kind: Literal["dsan"] = "dsan"
    objective: Literal["demographic", "expression"] = "expression"
    w_ensemble: float = Field(1.0, ge=0)
    w_side: float = Field(1.0, ge=0)
    w_demographic: float = Field(0.0, ge=0)
    w_gender: float = Field(1.0, ge=0)
    w_race: float = Field(1.0, ge=0)
    w_age: float = Field(1.0, ge=0)


class HeatmapLoss(_Cfg):
    """AU heatmap regression: squared error summed over pixels, averaged over AU maps."""

    kind: Literal["au_heatmap"] = "au_heatmap"
    sigma: float = Field(2.0, gt=0, description="Target Gaussian sigma, heatmap pixels.")


class DistillLoss(HeatmapLoss):
    """DSR-FAU student: heatmap loss + feature-map, region-wise and channel-wise distillation."""

    kind: Literal["au_distill"] = "au_distill"  # type: ignore[assignment]
    w_heatmap: float = Field(1.0, ge=0)
    w_feature: float = Field(1.0, ge=0)
    w_region: float = Field(1.0, ge=0)
    w_channel: float = Field(1.0, ge=0)
    regions: Literal["grid", "teacher_heatmaps"] = Field(
        "teacher_heatmaps", description="Regions of the region-relation term: an 8x8 grid or "
                                        "the teacher's AU heatmaps as soft masks.")


class SaliencyLoss(_Cfg):
    """Multi-indicator saliency loss ``w_kld KLD - w_cc CC - w_nss NSS``."""

    kind: Literal["saliency"] = "saliency"
    w_kld: float = Field(10.0, ge=0)
    w_cc: float = Field(2.0, ge=0)
    w_nss: float = Field(1.0, ge=0)


LossSpec = Annotated[
    AmpNetLoss | ClassifierLoss | DsanLoss | HeatmapLoss | DistillLoss | SaliencyLoss,
    Field(discriminator="kind"),
]


# ----------------------------------------------------------------------------- optimisation


class OptimSpec(_Cfg):
    """Optimiser."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSpec(_Cfg):
    """Learning-rate schedule, stepped per epoch (warm-up per step)."""

    name: Literal["constant", "step", "cosine"] = "cosine"
    step_epochs: int = Field(10, ge=1, description="'step': decay every n epochs.")
    gamma: float = Field(0.1, gt=0, le=1, description="'step': decay factor.")
    min_lr_frac: float = Field(0.0, ge=0, le=1, description="'cosine': final lr / lr.")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up (may be fractional).")


class StageSpec(_Cfg):
    """One training stage (most recipes have one)."""

    name: str = "train"
    epochs: int = Field(1, ge=1)
    loss: LossSpec
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    freeze: tuple[str, ...] = Field((), description="Parameter-name prefixes kept fixed.")


class TrainSpec(_Cfg):
    """Run settings."""

    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    seed: int = 0
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    amp_dtype: Literal["float16", "bfloat16"] = "bfloat16"
    deterministic: bool = Field(True, description="torch deterministic algorithms.")
    grad_clip: float | None = Field(None, gt=0, description="Max global gradient norm.")
    ckpt_every_steps: int = Field(0, ge=0, description="Also save last.pt every n steps (0: "
                                                       "only at epoch ends).")
    select_metric: str = Field("auto", description="Metric choosing best.pt ('auto': accuracy "
                                                   "for FER, mean ICC for AU, CC for saliency).")
    eval_every_epochs: int = Field(1, ge=1)


class Recipe(_Cfg):
    """A complete training recipe."""

    name: str
    description: str = ""
    run_name: str | None = Field(None, description="Default run folder: runs/<run_name> "
                                                    "(default: the recipe name).")
    model: ModelSpec
    data: DataSpec
    augment: AugmentSpec = AugmentSpec()
    stages: tuple[StageSpec, ...] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    teacher: TeacherSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        distill = any(s.loss.kind == "au_distill" for s in self.stages)
        if distill and self.teacher is None:
            raise ValueError("an au_distill stage needs a 'teacher' section")
        return self

    @property
    def epochs(self) -> int:
        """Total epochs over all stages."""
        return sum(s.epochs for s in self.stages)

    def digest(self) -> str:
        """Short hash of the recipe (resume refuses a different recipe)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """A copy with dotted-key overrides applied and re-validated.

        Args:
            overrides: e.g. ``{"data.max_train_samples": 16, "stages.0.optim.lr": 0.1,
                "stages.*.epochs": 1}`` (``*`` applies to every list item).

        Raises:
            KeyError: a path that does not exist in the recipe.
            pydantic.ValidationError: an invalid value.
        """
        d = copy.deepcopy(self.model_dump(mode="json"))
        for key, value in overrides.items():
            _set_path(d, key.split("."), value, key)
        return Recipe.model_validate(d)


def _set_path(node: Any, parts: list[str], value: Any, full: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        idx = range(len(node)) if head == "*" else [int(head)] if head.isdigit() else None
        if idx is None or any(i >= len(node) for i in idx):
            raise KeyError(f"override {full!r}: bad list index {head!r}")
        for i in idx:
            if rest:
                _set_path(node[i], rest, value, full)
            else:
                node[i] = value
        return
    if not isinstance(node, dict):
        raise KeyError(f"override {full!r}: {head!r} is below a scalar")
    if rest:
        if head not in node or node[head] is None:
            if head not in node:
                raise KeyError(f"override {full!r}: no key {head!r} (have {sorted(node)})")
            node[head] = {}
        _set_path(node[head], rest, value, full)
    else:
        node[head] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ValueError(f"override must look like key=value, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe YAML.

    Raises:
        FileNotFoundError: missing file.
        pydantic.ValidationError: unknown key or invalid value (the message names it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    recipe = Recipe.model_validate(data)
    return recipe.with_overrides(overrides) if overrides else recipe
