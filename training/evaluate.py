"""Evaluate a trained checkpoint on a dataset and print the papers' tables.

* Expression: per-class accuracy (one column per class, in the dataset's order), mean class
  accuracy, overall accuracy and macro-F1 — the layout of the RAF-DB / AffectNet tables of the
  AMP-Net and DSAN papers — plus the row-normalised confusion matrix.
* AU intensity: one column per AU, rows ICC(3,1), MAE (and PCC), last column the mean — the
  layout of DSR-FAU's DISFA / BP4D tables.
* Saliency: AUC-Judd, NSS, CC, KLD, SIM (CAT2000 / MIT benchmark order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectstream.training.data import build_dataset
from affectstream.models.checkpoint import load_checkpoint, read_checkpoint
from affectstream.training.recipes import HeatmapLoss, Recipe
from affectstream.training.tasks import Task, make_task
from affectstream.training.trainer import _to, resolve_device


def eval_task(recipe: Recipe, card: Any, labels: tuple[str, ...]) -> Task:
    """The task evaluating a recipe's final objective (distillation evaluates as heatmaps)."""
    loss = recipe.stages[-1].loss
    if loss.kind == "au_distill":
        loss = HeatmapLoss(sigma=loss.sigma)
    return make_task(loss, labels, card)


@torch.no_grad()
def predict(model: torch.nn.Module, task: Task, ds: Any, batch_size: int,
            device: torch.device, progress: Any = None) -> dict[str, np.ndarray]:
    """Run ``task.predict`` over a dataset in order; concatenated numpy outputs."""
    model.eval()
    n = len(ds)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=0)
    acc: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        batch = _to(batch, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = task.predict(model, batch)
        for k, v in out.items():
            acc.setdefault(k, []).append(v)
        if progress is not None:
            progress(len(batch["image"]))
    return {k: np.concatenate(v) for k, v in acc.items()}


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "eval",
                        fold: int | None = None, max_samples: int | None = None,
                        batch_size: int | None = None, device: str = "auto",
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the dataset at ``data`` with the recipe it was trained with.

    Args:
        checkpoint: ``best.pt`` / ``last.pt`` of a training run.
        data: the dataset folder (same dataset kind as in training).
        split: ``"eval"`` (the recipe's evaluation split: RAF-DB test, DISFA test fold...) or
            ``"train"``.
        fold: override the recipe's fold (DISFA, CK+).
        max_samples: evaluate only the first N samples.
        batch_size: default the recipe's ``eval_batch_size``.
        device: ``auto``/``cpu``/``cuda``.
        progress: show a progress bar.

    Returns:
        ``{"task": "classification"|"au"|"saliency", "metrics": {...}, "n": N, "dataset",
        "split", "checkpoint", "label_names"}``.

    Raises:
        FileNotFoundError / ValueError: bad checkpoint; DatasetFormatError: bad dataset.
    """
    obj = read_checkpoint(checkpoint)
    recipe = Recipe.model_validate(obj["recipe"])
    over: dict[str, Any] = {"data.max_eval_samples": max_samples,
                            "data.max_train_samples": max_samples}
    if fold is not None:
        if not hasattr(recipe.data, "fold"):
            raise ValueError(f"dataset {recipe.data.dataset!r} has no folds")
        over["data.fold"] = fold
    recipe = recipe.with_overrides(over)
    dev = resolve_device(device)
    model, card = load_checkpoint(checkpoint, dev)
    ds = build_dataset(recipe, data, "train" if split == "train" else "eval", card,
                       tuple(card.input_size), augment=False)
    labels = tuple(card.label_names) if card.task != "saliency" else ()
    if card.task in ("expression", "au") and tuple(ds.label_names) != labels:
        raise ValueError(f"{checkpoint} predicts {labels}, the dataset has {ds.label_names}")
    task = eval_task(recipe, card, labels)
    bs = batch_size or recipe.train.eval_batch_size
    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as prog:
            tid = prog.add_task(f"evaluating {Path(checkpoint).name}", total=len(ds))
            preds = predict(model, task, ds, bs, dev, lambda k: prog.update(tid, advance=k))
    else:
        preds = predict(model, task, ds, bs, dev)
    metrics = task.metrics(preds)
    return {"task": task.kind, "metrics": metrics, "n": len(ds), "dataset": recipe.data.dataset,
            "split": split, "checkpoint": str(checkpoint), "label_names": list(labels),
            "recipe": recipe.name, "epoch": obj.get("epoch")}


# ---------------------------------------------------------------------------------- tables


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _num(v: float, nd: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def fer_tables(report: dict[str, Any]) -> list[Any]:
    """Per-class accuracy table (%) and row-normalised confusion matrix (%)."""
    from rich.table import Table

    m, names = report["metrics"], report["label_names"]
    t = Table(title=f"{report['recipe']} on {report['dataset']} ({report['split']}, "
                    f"n={report['n']}): accuracy per class, %")
    for n in names:
        t.add_column(n, justify="right")
    for c in ("mean acc.", "overall acc.", "macro-F1"):
        t.add_column(c, justify="right", style="bold")
    t.add_row(*[_pct(m["per_class_accuracy"][n]) for n in names], _pct(m["mean_class_accuracy"]),
              _pct(m["accuracy"]), _pct(m["macro_f1"]))
    cm = np.asarray(m["confusion"], float)
    c = Table(title="confusion matrix, % of each true class (rows: truth, columns: prediction)")
    c.add_column("true \\ pred")
    for n in names:
        c.add_column(n[:8], justify="right")
    for i, n in enumerate(names):
        row = cm[i] / cm[i].sum() if cm[i].sum() else np.full(len(names), np.nan)
        c.add_row(f"{n} ({int(cm[i].sum())})", *[_pct(v) for v in row])
    return [t, c]


def au_tables(report: dict[str, Any]) -> list[Any]:
    """Per-AU ICC(3,1) / MAE / PCC table with the mean column."""
    from rich.table import Table

    m, names = report["metrics"], report["label_names"]
    t = Table(title=f"{report['recipe']} on {report['dataset']} ({report['split']}, "
                    f"n={report['n']} frames): AU intensity")
    t.add_column("metric")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("Avg.", justify="right", style="bold")
    for key, label in (("icc", "ICC(3,1)"), ("mae", "MAE"), ("pcc", "PCC")):
        t.add_row(label, *[_num(m[key][n], 2) for n in names], _num(m["mean"][key], 2))
    return [t]


def saliency_tables(report: dict[str, Any]) -> list[Any]:
    """AUC-Judd, NSS, CC, KLD, SIM means."""
    from rich.table import Table

    m = report["metrics"]
    t = Table(title=f"{report['recipe']} on {report['dataset']} ({report['split']}, "
                    f"n={report['n']} images): saliency")
    for c in ("AUC-Judd", "NSS", "CC", "KLD", "SIM"):
        t.add_column(c, justify="right")
    t.add_row(*[_num(m[k]) for k in ("auc_judd", "nss", "cc", "kld", "sim")])
    return [t]


def report_tables(report: dict[str, Any]) -> list[Any]:
    """The tables of a report, by task."""
    return {"classification": fer_tables, "au": au_tables,
            "saliency": saliency_tables}[report["task"]](report)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write a report as JSON (NaN as null)."""
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(clean(report), indent=2))
    return p
