"""``affectstream bench-models``: faces/s of each network per batch size on CPU or GPU
(:mod:`affectstream.pipeline.bench.models`). Exit codes: 0 done; 2 a bad option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from affectstream.pipeline.cli.common import console, fail, out, print_json

bench_models_cli = typer.Typer(add_completion=False)


@bench_models_cli.command("bench-models")
def bench_models(
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    half: bool = typer.Option(False, "--half", help="fp16 (CUDA only)."),
    batches: str = typer.Option("1,16,64,256", help="Faces per forward, comma-separated."),
    networks: Optional[str] = typer.Option(None, help="Subset, comma-separated (default all)."),
    min_s: float = typer.Option(1.0, help="Seconds timed per network and batch size."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default torch's)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Results as JSON on stdout."),
) -> None:
    """Faces/s of FaceMesh V2, FaceMesh, blendshapes and mini-Xception per batch size."""
    import torch

    from affectstream.pipeline.bench.models import NETWORKS, run_model_bench

    try:
        bs = tuple(int(x) for x in batches.split(",") if x.strip())
    except ValueError:
        bs = ()
    if not bs or min(bs) < 1:
        fail(f"--batches wants positive integers like 1,16,64, not {batches!r}", 2)
    nets = tuple(networks.split(",")) if networks else tuple(NETWORKS)
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("no CUDA device here (torch.cuda.is_available() is False)", 2)
    if threads:
        torch.set_num_threads(threads)
    try:
        res = run_model_bench(device, half, bs, nets, min_s, console=console)
    except ValueError as e:
        fail(str(e), 2)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2) + "\n")
        console.print(f"results written to {output}")
    if as_json:
        print_json(res)
        return
    t = Table(title=f"faces/s on {res['device']}, {res['dtype']}")
    t.add_column("network")
    for b in bs:
        t.add_column(f"batch {b}", justify="right")
    for n in nets:
        rates = {r["batch"]: r["faces_per_s"] for r in res["rows"] if r["network"] == n}
        t.add_row(n, *(f"{rates[b]:,.0f}" for b in bs))
    chain = {r["batch"]: r["faces_per_s"] for r in res["chain"]["rows"]}
    if chain:
        t.add_row("chain: " + " + ".join(res["chain"]["networks"]),
                  *(f"{chain[b]:,.0f}" if b in chain else "-" for b in bs))
    out.print(t)
