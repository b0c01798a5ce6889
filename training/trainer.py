"""The training loop: stages, progress, CSV/TensorBoard logs, checkpoints, exact resume.

Reproducibility: the model is initialised from ``train.seed``; each epoch's sample order is a
permutation drawn from ``(seed, epoch)``; each sample's augmentation from ``(seed, epoch,
index)`` (:class:`training.datasets.base.FaceDataset`); the DataLoader's own generator is private,
so creating loaders never touches the global torch RNG that dropout uses. ``last.pt`` stores the
model, optimiser, grad-scaler, task modules (e.g. the distillation adapter), the global RNG states,
the position inside the epoch and the partial epoch sums, so a run resumed after an interruption
(Ctrl-C, a crash, :class:`TrainingInterrupted`) produces the same weights as an uninterrupted run
on CPU. The learning rate is a pure function of the position (warm-up, then constant / step /
cosine), so there is no scheduler state to lose.

Outputs in ``out_dir``: ``metrics.csv`` (one row per epoch), ``tb/`` (TensorBoard events, when
the ``tensorboard`` package is installed), ``last.pt`` (full state), ``best.pt`` (the exported
model with the best ``select_metric``), ``recipe.yaml`` (the effective recipe).
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from affectstream.models.registry import ModelCard, create_model, get_card
from affectstream.training.data import build_dataset
from affectstream.training.datasets.base import FaceDataset
from affectstream.models.checkpoint import (
    checkpoint_dict,
    load_checkpoint,
    make_card,
    read_checkpoint,
    save_checkpoint,
)
from affectstream.training.recipes import Recipe, StageSpec
from affectstream.training.tasks import Task, make_task

log = logging.getLogger(__name__)

_MIN_IS_BETTER = ("loss", "val_loss", "kld", "mae", "mean.mae")


class TrainingInterrupted(RuntimeError):
    """Raised after ``last.pt`` was saved because the run was asked to stop early."""


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def lr_factor(stage: StageSpec, epoch_float: float) -> float:
    """Multiplier of the stage's base lr at ``epoch_float`` epochs into the stage.

    Linear warm-up over ``warmup_epochs``, then ``constant``, ``step`` (``gamma`` every
    ``step_epochs``) or ``cosine`` (from 1 down to ``min_lr_frac`` at the stage's end).
    """
    s = stage.schedule
    if s.warmup_epochs > 0 and epoch_float < s.warmup_epochs:
        return max(epoch_float / s.warmup_epochs, 1e-3)
    if s.name == "constant":
        return 1.0
    if s.name == "step":
        return s.gamma ** math.floor(epoch_float / s.step_epochs)
    span = max(stage.epochs - s.warmup_epochs, 1e-9)
    t = min(max((epoch_float - s.warmup_epochs) / span, 0.0), 1.0)
    return s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """Look up ``name`` (dotted, e.g. ``"mean.icc"``) in a metrics dict."""
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the scalar entries of a metrics dict (per-class dicts included)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[prefix + k] = float(v)
        elif isinstance(v, dict):
            out |= _scalars(v, f"{prefix}{k}.")
    return out


def _factory_params(name: str) -> set[str]:
    from affectstream.models.registry import _REGISTRY

    fn = _REGISTRY[name][0]
    return set(inspect.signature(fn).parameters)


def _load_init(model: nn.Module, path: Path, prefix: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"model.init.checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    target = model.get_submodule(prefix.rstrip(".")) if prefix else model
    target.load_state_dict(obj)


class Trainer:
    """Train a recipe on a dataset folder.

    Args:
        recipe: the validated recipe.
        data_root: the dataset folder (its published layout).
        out_dir: run folder (created).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        teacher: teacher checkpoint for distillation (overrides ``recipe.teacher.checkpoint``).
        progress: show rich progress bars.
        tensorboard: write TensorBoard events when the package is installed.
        stop_after_steps: save ``last.pt`` and raise :class:`TrainingInterrupted` after this many
            optimisation steps of this process (tests and manual pausing).
        console: a ``rich.console.Console`` for messages (default: a new one).
    """

    def __init__(self, recipe: Recipe, data_root: str | Path, out_dir: str | Path,
                 device: str = "auto", teacher: str | Path | None = None, progress: bool = True,
                 tensorboard: bool = True, stop_after_steps: int | None = None,
                 console: Any = None) -> None:
        self.recipe = recipe
        self.data_root = Path(data_root)
        self.out = Path(out_dir)
        self.device = resolve_device(device)
        self.teacher_path = Path(teacher) if teacher else (
            recipe.teacher.checkpoint if recipe.teacher else None)
        self.progress = progress
        self.want_tb = tensorboard
        self.stop_after_steps = stop_after_steps
        if console is None:
            from rich.console import Console

            console = Console(stderr=True, quiet=not progress)
        self.console = console
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ set-up

    def _build(self) -> None:
        r = self.recipe
        base_card = get_card(r.model.name)
        self.input_size = tuple(r.model.input_size or base_card.input_size)
        with self._geometry_progress("train") as cb:
            self.train_ds = build_dataset(r, self.data_root, "train", base_card,
                                          self.input_size, progress=cb)
        with self._geometry_progress("eval") as cb:
            self.eval_ds = build_dataset(r, self.data_root, "eval", base_card, self.input_size,
                                         progress=cb)
        labels = tuple(self.train_ds.label_names)
        params = _factory_params(r.model.name)
        kwargs = dict(r.model.kwargs)
        if base_card.task == "expression" and "num_classes" in params:
            kwargs.setdefault("num_classes", len(labels))
        if base_card.task == "au" and "num_aus" in params:
            kwargs.setdefault("num_aus", len(labels))
        self.model_kwargs = kwargs
        torch.manual_seed(r.train.seed)
        self.model = create_model(r.model.name, weights=None, **kwargs)
        self.frozen: tuple[str, ...] = ()
        if r.model.init is not None:
            _load_init(self.model, r.model.init.checkpoint, r.model.init.prefix)
            if r.model.init.freeze:
                self.frozen = (r.model.init.prefix,)
        self.model.to(self.device)
        overrides: dict[str, Any] = {"input_size": self.input_size}
        if base_card.task in ("expression", "au"):
            overrides["label_names"] = labels
        if r.data.alignment in ("5pt", "bbox"):
            overrides["alignment"] = r.data.alignment
        extra = dict(base_card.extra)
        extra["trained"] = {"recipe": r.name, "dataset": r.data.dataset,
                            "recipe_digest": r.digest()}
        if "landmark_template" in extra and self.input_size != tuple(base_card.input_size):
            sx = self.input_size[1] / base_card.input_size[1]
            sy = self.input_size[0] / base_card.input_size[0]
            extra["landmark_template"] = tuple((x * sx, y * sy)
                                               for x, y in extra["landmark_template"])
        overrides["extra"] = extra
        self.card: ModelCard = make_card(r.model.name, **overrides)
        self.teacher = None
        if any(s.loss.kind == "au_distill" for s in r.stages):
            if self.teacher_path is None:
                raise ValueError("this recipe distils from a teacher: pass --teacher "
                                 "runs/teacher/best.pt (or set teacher.checkpoint)")
            self.teacher, tcard = load_checkpoint(self.teacher_path, self.device)
            if tuple(tcard.label_names) != labels:
                raise ValueError(f"teacher {self.teacher_path} predicts {tcard.label_names}, "
                                 f"the dataset has {labels}")
            if tuple(tcard.input_size) != self.input_size:
                raise ValueError(f"teacher {self.teacher_path} takes {tuple(tcard.input_size)} "
                                 f"inputs, the student {self.input_size}: they share the batch")
        self.labels = labels

    @contextlib.contextmanager
    def _geometry_progress(self, split: str) -> Iterator[Callable[[int, int], None] | None]:
        if not self.progress or self.recipe.data.geometry != "pipeline":
            yield None
            return
        from rich.progress import Progress

        with Progress(console=self.console, transient=True) as prog:
            tid = prog.add_task(f"face geometry ({split}, pipeline detector + FaceMesh)",
                                total=None)

            def cb(done: int, total: int) -> None:
                prog.update(tid, completed=done, total=total)

            yield cb

    def _stage_at(self, epoch: int) -> tuple[int, StageSpec, int]:
        """(stage index, stage, epoch index inside the stage) of a global epoch."""
        start = 0
        for i, s in enumerate(self.recipe.stages):
            if epoch < start + s.epochs:
                return i, s, epoch - start
            start += s.epochs
        raise IndexError(epoch)

    def _make_optimizer(self, stage: StageSpec, task: Task) -> torch.optim.Optimizer:
        frozen = self.frozen + tuple(stage.freeze)
        for n, p in self.model.named_parameters():
            p.requires_grad_(not any(n.startswith(f) for f in frozen if f))
        params = [p for p in self.model.parameters() if p.requires_grad]
        for m in task.extra_modules().values():
            m.to(self.device)
            params += list(m.parameters())
        if not params:
            raise ValueError(f"stage {stage.name!r}: every parameter is frozen")
        o = stage.optim
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                   weight_decay=o.weight_decay)
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)

    def _set_train_mode(self, stage: StageSpec) -> None:
        self.model.train()
        frozen = [f.rstrip(".") for f in self.frozen + tuple(stage.freeze) if f]
        for name, mod in self.model.named_modules():
            if name and any(name == f or name.startswith(f + ".") for f in frozen):
                mod.eval()  # frozen BatchNorm keeps its statistics

    def _batches(self, n: int, epoch: int) -> list[list[int]]:
        bs = self.recipe.train.batch_size
        perm = np.random.default_rng([self.recipe.train.seed, 7919, epoch]).permutation(n)
        out = [perm[i:i + bs].tolist() for i in range(0, n, bs)]
        if len(out) > 1 and len(out[-1]) == 1:
            out.pop()  # a batch of one breaks BatchNorm in training mode
        return out

    def _loader(self, ds: FaceDataset, batches: list[list[int]]) -> torch.utils.data.DataLoader:
        nw = self.recipe.data.num_workers
        return torch.utils.data.DataLoader(
            ds, batch_sampler=batches, num_workers=nw, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.recipe.train.seed))

    def _autocast(self) -> contextlib.AbstractContextManager:
        t = self.recipe.train
        if self.device.type != "cuda" or not t.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, t.amp_dtype))

    # ------------------------------------------------------------------------- checkpoints

    def _rng_state(self) -> dict[str, Any]:
        st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}
        if torch.cuda.is_available():
            st["cuda"] = torch.cuda.get_rng_state_all()
        return st

    @staticmethod
    def _set_rng_state(st: dict[str, Any]) -> None:
        torch.set_rng_state(st["torch"])
        np.random.set_state(st["numpy"])
        random.setstate(st["python"])
        if "cuda" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda"])

    def _resume_key(self) -> str:
        # the recipe without its epoch counts: a run may be resumed with more epochs
        return self.recipe.with_overrides({"stages.*.epochs": 1}).digest()

    def _save_last(self, epoch: int, step_in_epoch: int, opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, task: Task, acc: dict[str, float],
                   rng: dict[str, Any] | None = None) -> None:
        obj = checkpoint_dict(
            self.model, self.recipe.model.name, self.model_kwargs, self.card, kind="last",
            recipe=self.recipe.model_dump(mode="json"), resume_key=self._resume_key(),
            epoch=epoch, step_in_epoch=step_in_epoch, global_step=self.global_step,
            optimizer=opt.state_dict(), scaler=scaler.state_dict(),
            task_state={k: m.state_dict() for k, m in task.extra_modules().items()},
            opt_stage=self._stage_at(min(epoch, self.recipe.epochs - 1))[0]
            if step_in_epoch else self._stage_at(max(epoch - 1, 0))[0],
            rng=rng or self._rng_state(), history=self.history, best=self.best,
            epoch_acc=dict(acc))
        save_checkpoint(obj, self.out / "last.pt")

    def _save_best(self, epoch: int, metrics: dict[str, Any]) -> None:
        obj = checkpoint_dict(self.model, self.recipe.model.name, self.model_kwargs, self.card,
                              kind="best", recipe=self.recipe.model_dump(mode="json"),
                              epoch=epoch, metrics=metrics, select=self.best)
        save_checkpoint(obj, self.out / "best.pt")

    # ---------------------------------------------------------------------------- logging

    def _write_csv(self) -> None:
        cols: list[str] = []
        for row in self.history:
            for k in row:
                if k not in cols:
                    cols.append(k)
        tmp = self.out / "metrics.csv.part"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for row in self.history:
                w.writerow(row)
        tmp.replace(self.out / "metrics.csv")

    def _open_tb(self) -> Any:
        if not self.want_tb:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard not installed: no TensorBoard logs (pip install tensorboard)")
            return None
        # on resume, drop events logged after the checkpoint (they will be logged again)
        return SummaryWriter(str(self.out / "tb"),
                             purge_step=self.global_step + 1 if self.global_step else None)

    # ---------------------------------------------------------------------------- evaluate

    @torch.no_grad()
    def evaluate(self, task: Task) -> dict[str, Any]:
        """Metrics and mean loss of the current model on the evaluation split."""
        self.model.eval()
        bs = self.recipe.train.eval_batch_size
        n = len(self.eval_ds)
        loader = self._loader(self.eval_ds, [list(range(i, min(i + bs, n)))
                                             for i in range(0, n, bs)])
        acc: dict[str, list[np.ndarray]] = {}
        loss_sum, count = 0.0, 0
        for batch in loader:
            batch = _to(batch, self.device)
            with self._autocast():
                pred = task.predict(self.model, batch)
                loss, _ = task.loss(self.model, batch)
            for k, v in pred.items():
                acc.setdefault(k, []).append(v)
            b = batch["image"].shape[0]
            loss_sum += float(loss.detach()) * b
            count += b
        cat = {k: np.concatenate(v) for k, v in acc.items()}
        metrics = task.metrics(cat) if cat else {}
        metrics["val_loss"] = loss_sum / max(count, 1)
        return metrics

    # -------------------------------------------------------------------------------- fit

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train all stages; returns ``{"history", "best", "best_path", "last_path"}``.

        Args:
            resume: continue from ``out_dir/last.pt`` (error if it belongs to another recipe).

        Raises:
            TrainingInterrupted: ``stop_after_steps`` reached (state saved).
            KeyboardInterrupt: re-raised after saving ``last.pt``.
            RuntimeError: a non-finite loss (the message names the samples).
        """
        r = self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        prev_det = torch.are_deterministic_algorithms_enabled()
        if r.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        random.seed(r.train.seed)
        np.random.seed(r.train.seed)
        try:
            self._build()
            return self._fit(resume)
        finally:
            torch.use_deterministic_algorithms(prev_det)

    def _fit(self, resume: bool) -> dict[str, Any]:
        r = self.recipe
        (self.out / "recipe.yaml").write_text(yaml.safe_dump(r.model_dump(mode="json"),
                                                             sort_keys=False))
        self.global_step = 0
        self.best: dict[str, Any] = {"metric": None, "value": None, "epoch": None}
        start_epoch, start_step = 0, 0
        state = None
        if resume:
            p = self.out / "last.pt"
            if not p.is_file():
                raise FileNotFoundError(f"--resume: no {p}")
            state = read_checkpoint(p)
            if state.get("resume_key") != self._resume_key():
                raise ValueError(f"{p} was written by a different recipe (or data options); "
                                 "resume needs the same recipe (only epochs may change)")
            self.model.load_state_dict(state["state_dict"])
            start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step = int(state["global_step"])
            self.history = list(state["history"])
            self.best = dict(state["best"])
            self.console.print(f"resuming {p} at epoch {start_epoch + 1}, step {start_step}")
        tb = self._open_tb()
        steps_here = 0
        cur_stage_idx, task, opt, scaler = -1, None, None, None
        step_rng: dict[str, Any] | None = None
        i = done = -1
        self._stop_requested = False
        old_handler = self._install_sigint()
        try:
            for epoch in range(start_epoch, r.epochs):
                si, stage, e_in = self._stage_at(epoch)
                same_stage = state is not None and state.get("opt_stage") == si
                if state is not None and not same_stage:
                    # the saved optimiser belongs to the previous stage: start this one fresh,
                    # drawing its initialisation from the saved RNG stream as the original run did
                    self._set_rng_state(state["rng"])
                if si != cur_stage_idx:
                    task = make_task(stage.loss, self.labels, self.card, self.teacher, self.model)
                    opt = self._make_optimizer(stage, task)
                    scaler = torch.amp.GradScaler(
                        "cuda", enabled=self.device.type == "cuda" and r.train.amp
                        and r.train.amp_dtype == "float16")
                    cur_stage_idx = si
                acc = {"loss_sum": 0.0, "n": 0}
                if state is not None:  # first epoch after a resume
                    if same_stage:
                        opt.load_state_dict(state["optimizer"])
                        scaler.load_state_dict(state["scaler"])
                        for k, m in task.extra_modules().items():
                            m.load_state_dict(state["task_state"][k])
                        self._set_rng_state(state["rng"])
                    acc = dict(state["epoch_acc"])
                    state = None
                batches = self._batches(len(self.train_ds), epoch)
                self.train_ds.set_epoch(epoch)
                t0 = time.perf_counter()
                self._set_train_mode(stage)
                for m in task.extra_modules().values():
                    m.train()
                skip = start_step if epoch == start_epoch else 0
                done, step_rng = skip, None
                loader = self._loader(self.train_ds, batches[skip:])
                n_steps = len(batches)
                with self._progress_bar(epoch, stage, n_steps, skip) as advance:
                    for i, batch in enumerate(loader, start=skip):
                        # RNG as it was before this step: an interrupt mid-step saves this one
                        step_rng = self._rng_state()
                        lr_f = lr_factor(stage, e_in + i / n_steps)
                        for g in opt.param_groups:
                            g["lr"] = stage.optim.lr * lr_f
                        batch = _to(batch, self.device)
                        with self._autocast():
                            loss, parts = task.loss(self.model, batch)
                        if not torch.isfinite(loss):
                            ids = list(batch.get("id", []))[:8]
                            raise RuntimeError(f"non-finite loss {float(loss.detach())} at epoch "
                                               f"{epoch + 1} step {i}; samples {ids}")
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        if r.train.grad_clip:
                            scaler.unscale_(opt)
                            torch.nn.utils.clip_grad_norm_(
                                [p for g in opt.param_groups for p in g["params"]],
                                r.train.grad_clip)
                        scaler.step(opt)
                        scaler.update()
                        b = batch["image"].shape[0]
                        acc["loss_sum"] += float(loss.detach()) * b
                        acc["n"] += b
                        for k, v in parts.items():
                            acc[f"{k}_sum"] = acc.get(f"{k}_sum", 0.0) + v * b
                        self.global_step += 1
                        steps_here += 1
                        done = i + 1
                        if tb is not None:
                            tb.add_scalar("train/loss", float(loss.detach()), self.global_step)
                            tb.add_scalar("train/lr", opt.param_groups[0]["lr"], self.global_step)
                        advance(float(loss.detach()))
                        ck = r.train.ckpt_every_steps
                        if ck and self.global_step % ck == 0 and i + 1 < n_steps:
                            self._save_last(epoch, i + 1, opt, scaler, task, acc)
                        stop_at = self.stop_after_steps
                        if stop_at is not None and steps_here >= stop_at:
                            self._save_last(epoch, i + 1, opt, scaler, task, acc)
                            raise TrainingInterrupted(
                                f"stopped after {steps_here} steps; resume with --resume")
                        if self._stop_requested:  # Ctrl-C: stop at this clean step boundary
                            self._save_last(epoch, i + 1, opt, scaler, task, acc)
                            self.console.print(f"interrupted: saved {self.out / 'last.pt'} "
                                               "(resume with --resume)", markup=False)
                            opt = None  # saved: nothing more to save on the way out
                            raise KeyboardInterrupt
                row = self._end_epoch(epoch, stage, task, acc, opt, time.perf_counter() - t0, tb)
                self._save_last(epoch + 1, 0, opt, scaler, task, {"loss_sum": 0.0, "n": 0})
                self.console.print(self._epoch_line(row), markup=False, highlight=False)
                if self._stop_requested and epoch + 1 < r.epochs:  # Ctrl-C during evaluation
                    self.console.print(f"interrupted: saved {self.out / 'last.pt'} "
                                       "(resume with --resume)", markup=False)
                    opt = None
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if opt is not None and done >= 0:
                # a second Ctrl-C (or one outside the main thread) landed inside a step
                self.console.print("interrupted: saving last.pt (resume with --resume)")
                self._save_last(epoch, done, opt, scaler, task, acc,
                                rng=step_rng if step_rng is not None and done == i else None)
            raise
        finally:
            self._restore_sigint(old_handler)
            if tb is not None:
                tb.close()
        if not (self.out / "best.pt").is_file():
            self._save_best(r.epochs, {})
        return {"history": self.history, "best": self.best, "best_path": self.out / "best.pt",
                "last_path": self.out / "last.pt"}

    def _install_sigint(self) -> Any:
        """First Ctrl-C: finish the current step, save, stop. Second: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        return signal.signal(signal.SIGINT, handler)

    @staticmethod
    def _restore_sigint(old: Any) -> None:
        if old is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, old)

    def _end_epoch(self, epoch: int, stage: StageSpec, task: Task, acc: dict[str, float],
                   opt: torch.optim.Optimizer, secs: float, tb: Any) -> dict[str, Any]:
        n = max(acc["n"], 1)
        row: dict[str, Any] = {"epoch": epoch + 1, "stage": stage.name,
                               "step": self.global_step, "train_loss": acc["loss_sum"] / n}
        for k, v in acc.items():
            if k.endswith("_sum") and k != "loss_sum":
                row[f"train_{k[:-4]}"] = v / n
        row["lr"] = opt.param_groups[0]["lr"]
        metrics: dict[str, Any] = {}
        last = epoch + 1 == self.recipe.epochs
        if (epoch + 1) % self.recipe.train.eval_every_epochs == 0 or last:
            metrics = self.evaluate(task)
            for k, v in _scalars({x: y for x, y in metrics.items()
                                  if x not in ("confusion", "support", "n")}).items():
                row[f"val_{k}" if not k.startswith("val_") else k] = v
        row["time_s"] = round(secs, 3)
        self.history.append(row)
        self._write_csv()
        if tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and k not in ("lr",):
                    tb.add_scalar(f"epoch/{k}", v, epoch + 1)
        if metrics:
            self._maybe_best(epoch + 1, task, metrics)
        return row

    def _maybe_best(self, epoch: int, task: Task, metrics: dict[str, Any]) -> None:
        name = self.recipe.train.select_metric
        if name == "auto":
            name = "mean." + task.default_metric if task.kind == "au" else task.default_metric
        value = metric_value(metrics, name)
        if value is None or not math.isfinite(value):
            name, value = "val_loss", metrics["val_loss"]
        better_low = name in _MIN_IS_BETTER or name.endswith(("loss", "kld", "mae"))
        cur = self.best.get("value")
        if (cur is None or self.best.get("metric") != name
                or (value < cur if better_low else value > cur)):
            self.best = {"metric": name, "value": value, "epoch": epoch}
            self._save_best(epoch, metrics)

    @contextlib.contextmanager
    def _progress_bar(self, epoch: int, stage: StageSpec, total: int, done: int
                      ) -> Iterator[Callable[[float], None]]:
        if not self.progress:
            yield lambda loss: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        desc = f"epoch {epoch + 1}/{self.recipe.epochs} [{stage.name}]"
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                      console=self.console, transient=True) as prog:
            tid = prog.add_task(desc, total=total, completed=done, loss="-")

            def advance(loss: float) -> None:
                prog.update(tid, advance=1, loss=f"{loss:.4f}")

            yield advance

    @staticmethod
    def _epoch_line(row: dict[str, Any]) -> str:
        keys = ["train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_mean.icc",
                "val_mean.mae", "val_cc", "val_nss"]
        parts = [f"{k}={row[k]:.4f}" for k in keys if k in row]
        return f"epoch {row['epoch']} [{row['stage']}] " + " ".join(parts) + \
            f" ({row['time_s']:.1f} s)"
