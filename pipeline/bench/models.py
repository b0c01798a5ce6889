"""``affectstream bench-models``: faces per second of each network at several batch sizes, on
CPU or a GPU (fp32 or fp16), and of the per-face chain they form (landmarks + blendshapes +
expression). Inputs are random tensors of each model's input shape: the cost of a forward does
not depend on the pixels. The figures size inference replicas (docs/scaling.md)."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

# network -> (registry id, input shape per face, channels-last); the chain is one face's path
# through the default pipeline (FaceMesh V2 -> blendshapes -> mini-Xception)
NETWORKS: dict[str, tuple[str, tuple[int, ...], bool]] = {
    "facemesh_v2": ("facemesh_v2", (3, 256, 256), True),
    "facemesh": ("facemesh", (3, 192, 192), True),
    "face_blendshapes": ("face_blendshapes", (146, 2), False),
    "mini_xception": ("mini_xception", (1, 64, 64), True),
}
CHAIN = ("facemesh_v2", "face_blendshapes", "mini_xception")


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (N threads, <processor>)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def faces_per_s(name: str, batch: int, device: torch.device, half: bool,
                min_s: float = 1.0, min_iters: int = 3) -> float:
    """Faces/s of network ``name`` at ``batch`` faces per forward (after 2 warm-up forwards;
    at least ``min_iters`` forwards and ``min_s`` seconds timed)."""
    from affectstream.models import create_model

    model_id, shape, cl = NETWORKS[name]
    net = create_model(model_id).to(device).eval()
    x = torch.rand((batch, *shape), device=device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if half:
        net, x = net.half(), x.half()
    for _ in range(2):
        net(x)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_s:
        net(x)
        n += 1
    _sync(device)
    return n * batch / (time.perf_counter() - t0)


def run_model_bench(device: str = "cpu", half: bool = False,
                    batches: tuple[int, ...] = (1, 16, 64, 256),
                    networks: tuple[str, ...] = tuple(NETWORKS), min_s: float = 1.0,
                    console: Any = None) -> dict:
    """Faces/s per network and batch size, plus the chain's faces/s per batch size
    (``1 / sum(1 / rate)`` over :data:`CHAIN`, i.e. one face through all three in turn).

    Raises:
        ValueError: ``half`` on CPU, or an unknown network.
    """
    dev = torch.device(device)
    if half and dev.type != "cuda":
        raise ValueError("--half needs a CUDA device (fp16 on CPU is not a supported path)")
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown:
        raise ValueError(f"unknown networks {unknown}; known: {', '.join(NETWORKS)}")
    rows = []
    for name in networks:
        for b in batches:
            rate = faces_per_s(name, b, dev, half, min_s)
            rows.append({"network": name, "batch": b, "faces_per_s": round(rate, 1),
                         "ms_per_forward": round(1000 * b / rate, 3)})
            if console is not None:
                console.print(f"  {name} batch {b}: {rate:,.0f} faces/s", highlight=False)
    chain = []
    for b in batches:
        rates = {r["network"]: r["faces_per_s"] for r in rows if r["batch"] == b}
        if all(n in rates for n in CHAIN):
            chain.append({"batch": b, "faces_per_s": round(
                1 / sum(1 / rates[n] for n in CHAIN), 1)})
    return {"device": device_name(dev), "dtype": "float16" if half else "float32",
            "torch": torch.__version__, "rows": rows, "chain": {"networks": list(CHAIN),
                                                                  "rows": chain},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
