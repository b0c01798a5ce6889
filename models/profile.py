"""Model profiling: parameters, FLOPs and latency of registered models.

``describe(name)`` builds the model from the registry (random init: weights do not change the
numbers), feeds it inputs shaped by its :class:`models.ModelCard` (:func:`example_inputs`) and
reports

* ``params`` — ``sum(p.numel() for p in model.parameters())``;
* ``flops`` — floating-point operations of one forward pass of **one** input at the card's input
  size, counted with :class:`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per
  multiply-accumulate of matmuls and convolutions and ignores element-wise ops);
* ``latency_ms`` — median wall time of a forward pass under ``torch.inference_mode`` per batch
  size (after one warm-up run), in milliseconds for the whole batch, on ``device``.

Used by ``affectstream models list --details`` and the benchmark command. This module registers
no model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from affectstream.models.registry import ModelCard, create_model, get_card, list_models


def example_inputs(card: ModelCard, batch_size: int = 1, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Positional inputs a model of ``card`` accepts, for profiling, tracing and tests.

    The image is ``(B, C, H, W)`` with ``C = 1`` for ``color="gray"`` else 3 and ``(H, W) =
    card.input_size``, standard-normal values (already "normalised"). A card with
    ``extra["landmarks_in"] = (K, 2)`` also gets a ``(B, K, 2)`` landmark tensor: the card's
    ``extra["landmark_template"]`` (input pixels) jittered by up to +-4 px, or the image centre.
    A point model (``extra["points_in"] = (K, 2)``, e.g. blendshapes) gets only ``(B, K, 2)``
    points uniform in [28, 228) px.

    Args:
        card: the model's card.
        batch_size: ``B``.
        device: device of the tensors.
        dtype: floating dtype of the tensors.
        seed: RNG seed (inputs are reproducible).

    Returns:
        ``(image,)`` or ``(image, landmarks)``.
    """
    g = torch.Generator().manual_seed(seed)
    if (pts := card.extra.get("points_in")) is not None:  # a point model: (B, K, 2) pixels
        return (torch.rand(batch_size, *pts, generator=g).mul(200).add(28)
                .to(device=device, dtype=dtype),)
    c = 1 if card.color == "gray" else 3
    h, w = card.input_size
    x = torch.randn(batch_size, c, h, w, generator=g)
    out = [x]
    lm_shape = card.extra.get("landmarks_in")
    if lm_shape is not None:
        k = int(lm_shape[0])
        tmpl = card.extra.get("landmark_template")
        base = (torch.tensor(tmpl, dtype=torch.float32) if tmpl is not None
                else torch.tensor([[w / 2, h / 2]]).expand(k, 2))
        jitter = (torch.rand(batch_size, k, 2, generator=g) * 8 - 4)
        out.append(base.unsqueeze(0) + jitter)
    return tuple(t.to(device=device, dtype=dtype) for t in out)


def output_tensors(out: Any) -> dict[str, torch.Tensor]:
    """Flatten a model output (tensor, tuple/list or dict of tensors) to ``{name: tensor}``.

    Tensors in a tuple are named ``"0"``, ``"1"``...; a lone tensor is named ``"out"``.
    """
    if isinstance(out, torch.Tensor):
        return {"out": out}
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items()}
    if isinstance(out, Sequence):
        return {str(i): v for i, v in enumerate(out)}
    raise TypeError(f"unsupported model output type {type(out).__name__}")


def count_params(model: nn.Module) -> int:
    """Number of parameters (``sum(p.numel())``, trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of ``model(*inputs)`` counted by :class:`FlopCounterMode` (2 per MAC)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(*inputs)
    return int(counter.get_total_flops())


def measure_latency_ms(model: nn.Module, inputs: tuple[torch.Tensor, ...], reps: int = 3,
                       warmup: int = 1) -> float:
    """Median wall time in ms of ``model(*inputs)`` over ``reps`` runs after ``warmup`` runs.

    CUDA work is synchronised before each clock read.
    """
    cuda = any(t.is_cuda for t in inputs)
    times = []
    with torch.inference_mode():
        for i in range(warmup + reps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(*inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def describe(name: str, batch_sizes: Iterable[int] = (1, 32), device: str = "cpu",
             reps: int = 3, warmup: int = 1, threads: int | None = None) -> dict[str, Any]:
    """Parameters, FLOPs and latency of a registered model.

    Args:
        name: registry id.
        batch_sizes: batch sizes to time (empty: no timing).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        reps: timed repetitions per batch size (median reported).
        warmup: untimed runs per batch size.
        threads: torch intra-op CPU threads during the measurement (restored afterwards);
            ``None`` keeps the current setting.

    Returns:
        ``{"name", "task", "input_size" (H, W), "color", "alignment", "weights", "params" (int),
        "flops" (int, one input, 2 per MAC), "gflops" (float), "latency_ms" ({batch: ms per
        batch}), "ms_per_item" ({batch: ms}), "device", "threads" (CPU threads used)}``.

    Raises:
        KeyError: unknown name.
    """
    card = get_card(name)
    model = create_model(name, weights=None).to(device).eval()
    flops = count_flops(model, example_inputs(card, 1, device))
    latency = {}
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        for b in batch_sizes:
            latency[int(b)] = measure_latency_ms(model, example_inputs(card, int(b), device), reps,
                                                 warmup)
    finally:
        torch.set_num_threads(prev)
    return {
        "name": name,
        "task": card.task,
        "input_size": tuple(card.input_size),
        "color": card.color,
        "alignment": card.alignment,
        "weights": card.weights,
        "params": count_params(model),
        "flops": flops,
        "gflops": flops / 1e9,
        "latency_ms": latency,
        "ms_per_item": {b: ms / b for b, ms in latency.items()},
        "device": str(device),
        "threads": used,
    }


def describe_all(batch_sizes: Iterable[int] = (1, 32), device: str = "cpu", task: str | None = None,
                 names: Iterable[str] | None = None, reps: int = 3, warmup: int = 1,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """:func:`describe` for every registered model (or ``names``; only ``task`` when given)."""
    selected = list(names) if names is not None else list_models(task)
    bs = tuple(batch_sizes)
    return [describe(n, bs, device, reps, warmup, threads) for n in selected]
