"""``affectstream train`` and ``affectstream eval``: the training CLI (mounted on the main app).

Examples::

    affectstream train configs/train/ampnet_rafdb.yaml --data /datasets/RAF-DB
    affectstream train configs/train/dsrfau_disfa_teacher.yaml --data /datasets/DISFA --fold 1
    affectstream train configs/train/dsrfau_disfa_student_kd.yaml --data /datasets/DISFA \\
        --fold 1 --teacher runs/teacher/best.pt
    affectstream eval runs/ampnet/best.pt --data /datasets/RAF-DB
    affectstream eval runs/student/best.pt --data /datasets/DISFA

Run folders default to ``runs/<run_name>`` of the recipe (ampnet, dsan, teacher, student,
saliency, saliency_fer); an existing run is never overwritten (``--resume`` continues it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

train_cli = typer.Typer(help="Train and evaluate the paper models on the public datasets.",
                        no_args_is_help=True)


def _fail(console, msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@train_cli.command("train")
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (configs/train/*.yaml).")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder in its published "
                                                      "layout.")],
    fold: Annotated[int | None, typer.Option("--fold", help="Cross-validation fold (DISFA "
                                                            "1-3, CK+).")] = None,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="Teacher checkpoint for "
                                                                   "distillation.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default: runs/<the "
                                                           "recipe's run_name>).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs of every stage "
                                                                "(override).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <out>/last.pt.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Recipe override key=value (dotted keys, YAML values), repeatable, e.g. "
                      "--set train.batch_size=16 --set data.max_train_samples=100.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train a recipe; logs metrics.csv and TensorBoard, writes last.pt / best.pt."""
    from pydantic import ValidationError
    from rich.console import Console

    from affectstream.training.datasets import DatasetFormatError
    from affectstream.training.recipes import load_recipe, parse_override
    from affectstream.training.trainer import Trainer, TrainingInterrupted

    console = Console(stderr=True)
    try:
        over = dict(parse_override(s) for s in (set_ or []))
        if epochs is not None:
            over["stages.*.epochs"] = epochs
        r = load_recipe(recipe, over)
        if fold is not None:
            if not hasattr(r.data, "fold"):
                _fail(console, f"--fold: dataset {r.data.dataset!r} has no folds")
            r = r.with_overrides({"data.fold": fold})
    except (FileNotFoundError, ValueError, KeyError, ValidationError) as e:
        _fail(console, str(e))
    if not data.is_dir():
        _fail(console, f"--data: not a folder: {data}")
    if out is None:
        out = Path("runs") / (r.run_name or r.name)
    if (out / "last.pt").is_file() and not resume:
        _fail(console, f"{out / 'last.pt'} exists: pass --resume to continue it or --out for a "
                       "new run")
    console.print(f"training [bold]{r.name}[/] ({r.model.name}) on {data} -> {out}")
    try:
        res = Trainer(r, data, out, device=device, teacher=teacher, progress=not quiet,
                      console=console).fit(resume=resume)
    except TrainingInterrupted as e:
        console.print(str(e))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with: affectstream train {recipe} --data {data} "
                      f"--out {out} --resume", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except (DatasetFormatError, FileNotFoundError, ValueError) as e:
        _fail(console, str(e))
    best = res["best"]
    console.print(f"done: best {best['metric']} = {best['value']:.4f} at epoch {best['epoch']}; "
                  f"{res['best_path']}" if best.get("value") is not None
                  else f"done: {res['best_path']}", markup=False)


@train_cli.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="best.pt / last.pt of a training run.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder in its published "
                                                      "layout.")],
    split: Annotated[str, typer.Option("--split", help="eval (the recipe's test split) or "
                                                       "train.")] = "eval",
    fold: Annotated[int | None, typer.Option("--fold", help="Override the trained fold.")] = None,
    max_samples: Annotated[int | None, typer.Option("--max-samples")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="JSON report (default: next to the "
                                                           "checkpoint).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Evaluate a checkpoint: accuracy / macro-F1 / confusion (FER), per-AU ICC(3,1) / MAE / PCC
    (AU), AUC-Judd / NSS / CC / KLD / SIM (saliency)."""
    from rich.console import Console

    from affectstream.training.datasets import DatasetFormatError
    from affectstream.training.evaluate import evaluate_checkpoint, report_tables, write_report

    console = Console()
    err = Console(stderr=True)
    if split not in ("eval", "train"):
        _fail(err, f"--split must be eval or train, got {split!r}")
    try:
        rep = evaluate_checkpoint(checkpoint, data, split, fold, max_samples, batch_size, device,
                                  progress=not quiet)
    except (DatasetFormatError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(err, str(e))
    for t in report_tables(rep):
        console.print(t)
    path = out or checkpoint.with_name(f"eval_{rep['dataset']}_{split}.json")
    write_report(rep, path)
    console.print(f"report: {path}", markup=False)
