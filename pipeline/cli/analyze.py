"""``affectstream analyze``: offline analyses of the models.

Mount with ``app.add_typer(analyze_app, name="analyze")``.

``affectstream analyze au-selectivity`` measures which feature maps of a registered CNN are
selective to which facial action units (Zhou & Shi, IJCNN 2017, doi:10.1109/IJCNN.2017.7966100)
and compares expression classification from AU-selective vs random vs highest-variance maps;
the work is done by :mod:`training.au_selectivity`.

Exit codes: 0 done; 2 bad option or unreadable input (missing labels/images, unknown model or
layer, a model without trained weights and no ``--allow-untrained``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

analyze_app = typer.Typer(help="Offline model analyses (AU-selective feature maps).",
                          no_args_is_help=True, add_completion=False)

_err = Console(stderr=True)
_out = Console()


@analyze_app.callback()
def _analyze() -> None:
    """Offline model analyses (AU-selective feature maps)."""
    # A callback keeps this a command group even while it has a single command.

_LABELS_HELP = (
    "Labels CSV: column 'path' (image file relative to --images, or to the CSV's folder, or "
    "absolute); optional 'x1,y1,x2,y2' face box in pixels (else the whole image); AU columns "
    "'AU01','AU02',... with intensity 0-5 or presence 0/1 (empty = unknown); 'expression' with "
    "a canonical emotion name (anger, contempt, disgust, fear, happiness, neutral, sadness, "
    "surprise). Without AU columns, weak AU labels are derived from the expression. "
    "Default: <images>/labels.csv.")


def _fail(msg: str) -> None:
    _err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        _fail(f"--k must be comma-separated integers, got {text!r}")
        raise
    if not vals or min(vals) < 1:
        _fail(f"--k needs positive integers, got {text!r}")
    return vals


@analyze_app.command("au-selectivity")
def au_selectivity_cmd(
    model: Annotated[str, typer.Option("--model", help="Registered model id "
                                       "(see 'affectstream models list').")] = "mini_xception",
    layers: Annotated[str, typer.Option(
        help="Comma-separated module names to analyse (as in model.named_modules(), e.g. "
             "'layer3,layer4'); default: the card's feature_layers or the last two convs.")] = "",
    images: Annotated[Path | None, typer.Option(
        help="Folder of face images; omit to use the built-in real demo photos (5 pinned posed "
             "faces, jittered; weak AU labels).")] = None,
    labels: Annotated[Path | None, typer.Option(help=_LABELS_HELP)] = None,
    out: Annotated[Path, typer.Option(help="Output folder for the CSV tables and the PNG.")] = Path(
        "au_selectivity"),
    weights: Annotated[str, typer.Option(
        help="'default' (the card's pretrained weights; a model without any is refused "
             "unless --allow-untrained), 'none' (random init, on purpose), or a trained .pt "
             "path.")] = "default",
    pool: Annotated[str, typer.Option(help="Spatial pooling of a map: mean or max.")] = "mean",
    method: Annotated[str, typer.Option(help="Selectivity index: dprime or pearson.")] = "dprime",
    k: Annotated[str, typer.Option(help="Map counts for the feature-selection comparison.")] = "8,16,32",
    cv: Annotated[int, typer.Option(min=2, help="Cross-validation folds (at most).")] = 5,
    n_random: Annotated[int, typer.Option(min=1, help="Random draws per fold.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of folds, draws and demo jitter.")] = 0,
    allow_untrained: Annotated[bool, typer.Option(
        "--allow-untrained", help="Analyse a model that has no trained weights (random "
        "features; for tests and development). Warns on every run.")] = False,
) -> None:
    """Rank feature maps by AU selectivity; write CSV tables and a heatmap PNG."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from affectstream.models.registry import get_card
    from affectstream.training import au_selectivity as aus

    if pool not in ("mean", "max"):
        _fail(f"--pool must be mean or max, got {pool!r}")
    if method not in ("dprime", "pearson"):
        _fail(f"--method must be dprime or pearson, got {method!r}")
    k_values = _ints(k)
    from affectstream.pipeline.untrained import UntrainedModelError, check_trained

    w: str | None = None if weights.lower() == "none" else weights
    try:
        get_card(model)
        if w is None:  # random init asked for by name: allowed, but said
            warnings = [f"--weights none: {model!r} runs with random weights"]
        elif w == "default":
            warnings = check_trained([model], allow_untrained, "pass --weights")
        else:
            warnings = []
    except (KeyError, UntrainedModelError) as e:
        _fail(str(e.args[0]))
        raise
    for msg in warnings:
        _err.print(f"[bold yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)
    try:
        if images is None and labels is None:
            faces = aus.default_real_faces(seed=seed)
            source = "built-in demo photos (weak AU labels)"
        else:
            csv_path = labels if labels is not None else images / "labels.csv"  # type: ignore[operator]
            if not csv_path.is_file():
                _fail(f"labels CSV not found: {csv_path} (pass --labels)")
            faces = aus.load_labels_csv(csv_path, images)
            source = str(csv_path)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(str(e))
        raise
    layer_list = [s.strip() for s in layers.split(",") if s.strip()] or None
    _err.print(f"{model}: {len(faces)} faces from {source}; AUs {', '.join(faces.au_names)}")
    with Progress(TextColumn("features"), BarColumn(), MofNCompleteColumn(), console=_err,
                  transient=True) as prog:
        task = prog.add_task("features", total=len(faces))
        try:
            res = aus.run_au_selectivity(
                model, faces, out, layers=layer_list, weights=w, pool=pool, method=method,
                k_values=k_values, n_random=n_random, cv=cv, batch_size=batch_size,
                device=device, seed=seed,
                progress=lambda done, total: prog.update(task, completed=done))
        except KeyError as e:
            _fail(str(e.args[0]))
            raise
        except (ValueError, FileNotFoundError, OSError) as e:
            _fail(str(e))
            raise
    for note in res.notes:
        _err.print(f"[yellow]note:[/] {note}", highlight=False)
    top = Table(title="Most selective map per AU")
    for col in ("AU", "map", "selectivity"):
        top.add_column(col)
    for au, lst in res.ranking.items():
        if lst:
            top.add_row(au, lst[0][0], f"{lst[0][1]:.2f}")
    _out.print(top)
    if res.comparison:
        cmp_table = Table(title="Expression accuracy from k maps (CV)")
        for col in ("k", "strategy", "accuracy", "± std", "macro-F1"):
            cmp_table.add_column(col)
        for row in res.comparison:
            cmp_table.add_row(str(row["k"]), row["strategy"], f"{row['accuracy']:.3f}",
                              f"{row['accuracy_std']:.3f}", f"{row['macro_f1']:.3f}")
        _out.print(cmp_table)
    for name, path in res.files.items():
        _err.print(f"wrote {name}: {path}", highlight=False)
