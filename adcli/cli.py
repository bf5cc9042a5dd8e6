"""The `adcli` command line: a thin Typer layer; every command calls one library function."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adcli import __version__
from adcli.core.errors import AdcliError, OutputError, Stopped
from adcli.model.recipe import recipe_names

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, context_settings=HELP_OPTIONS,
                  help="Find defects in product images with models trained on good images only.")
console = Console(stderr=True, soft_wrap=True)  # one message = one line, whatever the width


# Shared by the commands that score images.
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per model call "
                                                  "(default: the recipe's inference.batch_size).")]
Backend = Annotated[str, typer.Option("--backend", help="torch, or onnx / openvino: the graph `adcli export` wrote "
                                      "(CPU).")]


def _version(value: bool):
    if value:
        print(f"adcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                         help="Print the version and exit.")] = None,
         quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress (bars or log lines) and no info "
                                             "log lines: warnings, errors and results only.")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also debug log lines.")] = False,
         threads: Annotated[Optional[int], typer.Option("--threads", envvar="ADCLI_THREADS", min=1,
                                                        help="CPU threads for torch (default: one per physical core). "
                                                        "Two jobs on one PC: give each half.")] = None):
    import logging

    from adcli.core import progress
    from adcli.core.allocator import keep_freed_memory

    keep_freed_memory()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    progress.settings.quiet = quiet
    logging.getLogger("adcli").setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


@app.command(epilog="Example: adcli prepare /data/mvtec --out prepared/   (good images only: --format folder)")
def prepare(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for manifest.jsonl, summary.csv, problems.txt.")],
    fmt: Annotated[str, typer.Option("--format", help="mvtec | visa | folder")] = "mvtec",
    calib_fraction: Annotated[float, typer.Option(help="Fraction of each category's train/good held out for calibration "
                                                "(categories with validation/good use that instead).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the calibration hold-out.")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Stop on the first problem instead of listing it.")] = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Accept images whose links lead out of the "
                                               "dataset folder (skipped by default).")] = False,
):
    """Scan a dataset, decode every image once, and write a manifest of samples."""
    from adcli.data.manifest import prepare as prepare_dataset
    from adcli.data.manifest import write_prepared
    from adcli.core.progress import print_table, track
    from adcli.stats.thresholds import MIN_NORMALS

    with track(console, "checking images", None) as task:
        result = prepare_dataset(root, fmt, calib_fraction, seed, strict, progress=task.advance, follow_links=follow_links)
    for problem in result.problems:
        console.print(f"[yellow]warning:[/] {problem}", highlight=False)
    write_prepared(result, out)
    table = Table(title=f"prepared {root} -> {out}")
    for col in ("category", "train", "calib", "test_good", "test_defect"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for row in result.summary_rows():
        table.add_row(*(str(row[c]) for c in ("category", "train", "calib", "test_good", "test_defect")))
    print_table(console, table)
    if result.problems:
        console.print(f"{len(result.problems)} problem(s) listed in {out / 'problems.txt'}")
    for line in result.calibration_warnings(MIN_NORMALS):
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


@app.command(epilog="Example: adcli train --recipe knn --profile cpu --data prepared/ --out runs/knn")
def train(
    data: Annotated[Path, typer.Option("--data", help="Prepared dataset folder (adcli prepare --out).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder; becomes the model bundle.")],
    recipe: Annotated[Optional[str], typer.Option("--recipe", help=f"Built-in recipe ({', '.join(recipe_names())}) "
                                                  "or a YAML path. CPU-only line: knn (measured best on a CPU; the "
                                                  "diffusion recipes' paper settings need a GPU: docs/recipes.md).")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Named profile of the recipe: cpu, demo, test.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key: --set train.epochs=5.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    stages_from: Annotated[Optional[Path], typer.Option("--stages-from", help="Multi-stage methods (timenet): reuse "
                                                        "the finished stages of this run where the recipe and data match.")] = None,
    pack: Annotated[bool, typer.Option("--pack", help="Copy referenced pretrained weights (DiAD's Stable Diffusion) "
                                       "into the run folder (see adcli weights pack).")] = False,
    devices: Annotated[int, typer.Option("--devices", min=1, help="Train in N processes on this machine through "
                                         "torchrun (N GPUs; gloo on CPU). Several machines: run torchrun yourself.")] = 1,
):
    """Train one model for all categories of the prepared data."""
    from adcli.model.recipe import load_recipe
    from adcli.commands.train import train as train_model

    if resume and (recipe or profile or overrides):
        raise AdcliError("--resume continues with the run's stored recipe; drop --recipe/--profile/--set")
    if not resume and not recipe:
        raise AdcliError("--recipe is required (e.g. --recipe knn)")
    loaded = None if resume else load_recipe(recipe, profile, overrides or [])  # a bad recipe: one line, no launch
    if devices > 1 and "WORLD_SIZE" not in os.environ:  # not yet inside a torchrun launch
        from adcli.core.distributed import torchrun_argv

        command = torchrun_argv(sys.argv[1:], devices)
        console.print(" ".join(command), highlight=False)
        code = subprocess.run(command).returncode
        # torchrun exits 1 when a process fails; in adcli 1 means "defects found", so a failure is 2.
        raise typer.Exit(2 if code == 1 else code)
    run = train_model(data, out, loaded, resume=resume, device=device, console=console, stages_from=stages_from)
    if pack:
        weights_pack(run)


CALIBRATE_HELP = """Choose per-category thresholds from held-out normal images, or set them by hand.

Exit codes: 0 = calibration written; 2 = usage, model or data error, or no category of the call has
enough normals (nothing written); 7 = partly calibrated: written for the categories with enough
normals, the others left out (each named in a warning with what would fix it; one with a previous
calibration keeps it, one without stays refused by inspect).
"""


@app.command(help=CALIBRATE_HELP,
             epilog="Examples: adcli calibrate runs/knn --data prepared/ · adcli calibrate runs/knn --normals "
                    "line3/good --category bottle · adcli calibrate runs/knn --threshold bottle=0.42")
def calibrate(
    model: Annotated[Path, typer.Argument(help="Trained model (run folder).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared dataset folder: its calib split (the "
                                                 "dataset's validation/good, or held-out train/good).")] = None,
    normals: Annotated[Optional[Path], typer.Option("--normals", help="A folder of fresh good images of one "
                                                    "category (no prepare needed).")] = None,
    category: Annotated[Optional[str], typer.Option("--category", help="The category of --normals (or the only "
                                                    "category of --data to recalibrate).")] = None,
    threshold: Annotated[Optional[list[str]], typer.Option("--threshold", help="Set a category's threshold by hand: "
                                                           "CATEGORY=VALUE (stored with source 'manual').")] = None,
    target_fpr: Annotated[float, typer.Option(help="Target false-alarm rate per category.")] = 0.01,
    min_normals: Annotated[int, typer.Option("--min-normals", min=2, help="Leave out categories with fewer calibration "
                                             "normals (exit 7; exit 2 when that is every one).")] = 20,
    allow_few: Annotated[bool, typer.Option("--allow-few", help="Calibrate even below --min-normals (weaker thresholds).")] = False,
    no_self_check: Annotated[bool, typer.Option("--no-self-check", help="Skip the self-check (scoring synthetic "
                                                "defects, and --data's labelled test defects, to see whether the model "
                                                "can find defects at all).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: BatchSize = None,
):
    from adcli.commands.calibrate import calibrate as run_calibration
    from adcli.commands.calibrate import parse_thresholds
    from adcli.core.errors import PartlyCalibrated

    try:
        run_calibration(model, data, target_fpr, device=device, console=console, batch_size=batch_size, normals=normals,
                        category=category, thresholds=parse_thresholds(threshold or []), min_normals=min_normals,
                        allow_few=allow_few, self_check=not no_self_check)
    except PartlyCalibrated as exc:  # written: not an "error:" line
        console.print(f"[yellow]partly calibrated:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code)


INSPECT_HELP = """Score every image in a folder, or the image files given; write heatmaps, results.csv/.jsonl
and summary.json. Given files, also print one line per file: verdict, normalised score (0.5 =
threshold, the same scale on every model), raw score and threshold, heatmap.

Exit codes: 0 = ran, no defects; 1 = ran, defects found; 2 = usage/config error, a model not
calibrated, or (--require-self-check) one whose self-check failed (nothing done); 3 = ran, no defects, but something needs a look: files that could not
be read, or parts like no trained product (UNKNOWN_CATEGORY); 4 = internal error (a bug; rows
written before it are kept); 5 = results could not be written (disk full, read-only); 6 = ran, no
defects, but images of an uncalibrated category were scored without verdicts (--scores-only, or
--category auto on a partly calibrated model). Page a person on 1 and 3.

Safe to run from cron: already inspected files are skipped, files still being written are left
for a later run, writes are atomic, a second run on the same --out waits for the first, and
DEFECT/ERROR rows of a run that was killed before it finished are reported (and counted in the
exit code) by the next run.
"""


@app.command(help=INSPECT_HELP, epilog="Examples: adcli inspect line3/today --model runs/knn --out inspected/ ;  "
             "adcli inspect part.png --model runs/knn --out inspected/")
def inspect(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="A folder of images (searched "
                                                "recursively), or image files (exactly those).")],
    model: Annotated[Path, typer.Option("--model", help="Trained model (run folder).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for heatmaps, results and summary.")],
    category: Annotated[str, typer.Option(help="Category of every image (skips routing), or auto: the trained product "
                                                "each image is nearest to. An image like none is scored there too: "
                                                "DEFECT above its threshold, else UNKNOWN_CATEGORY.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Inspect again files already inspected with this model.")] = False,
    settle_seconds: Annotated[float, typer.Option(help="Files modified more recently than this are still being written.")] = 2.0,
    lock_wait: Annotated[float, typer.Option(help="Seconds to wait for another run on the same --out.")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON summary on stdout.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: BatchSize = None,
    scores_only: Annotated[bool, typer.Option("--scores-only", help="Allow an uncalibrated model: record scores, "
                                              "verdict 'uncalibrated', exit code 6.")] = False,
    heatmaps: Annotated[str, typer.Option("--heatmaps", help="Heatmap pictures for: all | defects (every image "
                                          "not OK) | none.")] = "defects",
    heatmap_format: Annotated[str, typer.Option("--heatmap-format", help="Heatmap pictures as jpg (fast, small) "
                                                "or png (lossless).")] = "jpg",
    backend: Backend = "torch",
    require_self_check: Annotated[bool, typer.Option("--require-self-check", help="Refuse (exit 2) a model whose "
                                                     "calibration self-check says it cannot find defects, or that "
                                                     "has none.")] = False,
    watch: Annotated[Optional[float], typer.Option("--watch", metavar="SECONDS", help="Keep running: inspect new "
                                                   "files every SECONDS with the model loaded once, until stopped "
                                                   "(Ctrl-C, SIGTERM: exit 0). Verdicts are in the results files.")] = None,
):
    import json

    from adcli.commands.inspect import inspect_paths
    from adcli.commands.inspect.files import file_lines
    from adcli.core.errors import UsageError

    quiet = Console(stderr=True, quiet=True) if as_json else console
    if watch is not None:
        if len(paths) != 1 or paths[0].is_file():
            raise UsageError("--watch takes one folder, not files")
        _watch(paths[0], model, out, watch, as_json, quiet, category=category, device=device, force=force,
               settle_seconds=settle_seconds, lock_wait=lock_wait, batch_size=batch_size, scores_only=scores_only,
               heatmaps=heatmaps, backend=backend, heatmap_format=heatmap_format, require_self_check=require_self_check)
        raise typer.Exit(0)
    summary = inspect_paths(paths, model, out, category=category, device=device, force=force,
                            settle_seconds=settle_seconds, lock_wait=lock_wait, console=quiet, batch_size=batch_size,
                            scores_only=scores_only, heatmaps=heatmaps, backend=backend, heatmap_format=heatmap_format,
                            require_self_check=require_self_check)
    if as_json:
        print(json.dumps(summary.record))
    else:
        for line in file_lines(summary, out):  # files given: one line each on stdout, the counts below on stderr
            print(line, flush=True)
        c = summary.counts
        console.print(f"{c['OK']} OK, {c['DEFECT']} DEFECT, {c['ERROR']} ERROR, {c['UNKNOWN_CATEGORY']} UNKNOWN_CATEGORY, "
                      f"{c['uncalibrated']} uncalibrated; {summary.skipped} already inspected"
                      + (" (--force judges them again)" if summary.skipped and not summary.rows else "")
                      + (f"; {summary.still_writing} still being written (judged by a later run)" if summary.still_writing else "")
                      + f"; results: {out / 'results.csv'}", highlight=False)
        _print_notices(summary)
        _print_drift_and_speed(summary)
    raise typer.Exit(summary.exit_code)


def _print_notices(summary) -> None:
    """What a person must not miss beyond the counts: rows of a killed run reported now, a clock ahead."""
    if summary.carried:
        counts = ", ".join(f"{n} {v}" for v, n in summary.carried_counts.items() if n)
        console.print(f"[yellow]from an interrupted run, not reported before:[/] {counts}", highlight=False)
        for row in summary.carried:
            console.print(f"  {row['verdict']} {escape(row['path'])}", highlight=False)
    if summary.clock_ahead:
        console.print(f"[yellow]warning:[/] files modified up to {summary.clock_ahead:.0f} s in the future: the clock of "
                      "the PC that writes them is off (judged once their size held for --settle-seconds)", highlight=False)


def _print_drift_and_speed(summary) -> None:
    for cat, d in summary.drift.items():
        if d["drift"]:
            console.print(f"[yellow]drift:[/] {cat}: recent OK scores moved away from calibration (z = {d['z']})")
    console.print(f"Speed: {summary.load_ms:.1f}ms load, {summary.infer_ms:.1f}ms infer, "
                  f"{summary.write_ms:.1f}ms write per image")


def _watch(folder: Path, model: Path, out: Path, interval: float, as_json: bool, quiet: Console, **options) -> None:
    """`inspect --watch`: one line per pass that wrote rows (with --json: its summary.json on stdout),
    one per DEFECT; SIGINT and SIGTERM end it after the file in hand."""
    import json
    import signal
    import threading
    import time

    from adcli.commands.inspect import watch_folder

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_pass(summary) -> None:
        if as_json:
            print(json.dumps(summary.record), flush=True)
            return
        c, files = summary.counts, f"{len(summary.rows)} file{'' if len(summary.rows) == 1 else 's'}"
        console.print(f"{time.strftime('%H:%M:%S')} {files} in {summary.seconds:.2f} s: {c['OK']} OK, {c['DEFECT']} DEFECT, "
                      f"{c['ERROR']} ERROR, {c['UNKNOWN_CATEGORY']} UNKNOWN_CATEGORY, {c['uncalibrated']} uncalibrated",
                      highlight=False)
        for row in summary.rows:
            if row["verdict"] == "DEFECT":
                console.print(f"  DEFECT {escape(row['path'])} ({row['category']}: score {row['score_normalised']} "
                              f"(raw {row['score']} >= threshold {row['threshold']}))", highlight=False)
            elif row["verdict"] == "UNKNOWN_CATEGORY":
                console.print(f"  UNKNOWN_CATEGORY {escape(row['path'])} (like no trained product; nearest "
                              f"{row['category']}: score {row['score_normalised']} (raw {row['score']} < threshold "
                              f"{row['threshold']}))", highlight=False)
        _print_notices(summary)
        _print_drift_and_speed(summary)

    try:
        passes = watch_folder(folder, model, out, interval, stop=stop, on_pass=on_pass, console=quiet, **options)
        quiet.print(f"stopped after {passes} pass{'' if passes == 1 else 'es'}; results: {out / 'results.csv'}",
                    highlight=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command(epilog="Example: adcli report runs/knn --data prepared/ --out report/")
def report(
    model: Annotated[Path, typer.Argument(help="Trained model (run folder).")],
    data: Annotated[Path, typer.Option("--data", help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, metrics.csv, report.html.")],
    split: Annotated[str, typer.Option(help="Split to evaluate: test (default), calib or train.")] = "test",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: BatchSize = None,
    backend: Backend = "torch",
):
    """Evaluate a model on a labelled split: seven metrics per category, ROC, histograms, gallery."""
    from adcli.commands.report import make_report

    make_report(model, data, out, split=split, device=device, console=console, batch_size=batch_size, backend=backend)


@app.command(epilog="Example: adcli review inspected/   (then open inspected/review.html)")
def review(
    out: Annotated[Path, typer.Argument(help="An `adcli inspect` output folder (its --out).")],
):
    """Write OUT/review.html: counts, scores against thresholds, drift, every DEFECT/ERROR with its heatmap."""
    from adcli.commands.report.review import render_review

    console.print(f"review: {render_review(out)}")


@app.command(epilog="Example: adcli checks --out /data/line3/inspected")
def checks(
    out: Annotated[Path, typer.Option("--out", help="Folder whose free space and write access to check.")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON on stdout.")] = False,
):
    """What a support call asks first: versions, threads, CPU/GPU, weights found, disk, write access.
    Exits 5 when the folder cannot be written, else 0."""
    import json

    from adcli.commands.checks import run_checks

    result = run_checks(out)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table = Table(title="adcli checks", show_header=False)
        table.add_column("check", no_wrap=True)
        table.add_column("result", overflow="fold")
        for name, version in result["versions"].items():
            table.add_row(name, str(version or "not installed"))
        c = result["compute"]
        table.add_row("cpu", f"{c['cpu']} ({c['cpu_count']} logical cores; torch uses {c['torch_threads']} threads)")
        table.add_row("gpu", ", ".join(c["gpus"]) if c["cuda"] else "none (CUDA not available)")
        table.add_row("ADCLI_WEIGHTS_DIR", result["weights_dir"] or "unset")
        for network, w in result["weights"].items():
            table.add_row(f"weights {network}", w["path"] if w["found"] else f"not found: {w['how']}")
        d = result["disk"]
        table.add_row("output folder", f"{d['folder']}: {d['free_bytes'] / 1e9:.1f} GB free"
                      + (" (low)" if d["low"] else "") + ("; writable" if d["writable"] else f"; NOT writable: {d['problem']}"))
        table.add_row("recipes", ", ".join(result["recipes"]))
        Console(soft_wrap=True).print(table)
    raise typer.Exit(0 if result["ok"] else OutputError.exit_code)


@app.command(epilog="Example: adcli bench runs/knn --batch 1,8 --dtype fp32,bf16 --backend torch,onnx --threads 2")
def bench(
    model: Annotated[Optional[Path], typer.Argument(help="Trained model (run folder); or give --recipe.")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes to time, comma-separated.")] = "1,4,8",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 and/or bf16 (autocast), comma-separated.")] = "fp32",
    backend: Annotated[str, typer.Option("--backend", help="torch, onnx, openvino (after `adcli export`), comma-separated.")] = "torch",
    threads: Annotated[Optional[int], typer.Option("--threads", help="Torch threads (default: torch's choice).")] = None,
    images: Annotated[int, typer.Option("--images", help="Images timed per setting, after one warm-up call.")] = 32,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Time a recipe's untrained model instead of a run "
                                                 "(random weights: same cost).")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="With --recipe: the profile (default: the paper's settings).")] = None,
    categories: Annotated[int, typer.Option("--categories", help="With --recipe: number of categories.")] = 1,
    train_images: Annotated[int, typer.Option("--train-images", help="With --recipe: training images per category "
                                              "(sizes knn's banks).")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
):
    """How fast a model scores here: FLOPs/image, ms/image, images/s, peak memory, GFLOP/s and the share
    of this machine's matmul peak in the same dtype. Random images; nothing is written."""
    import dataclasses
    import json

    from adcli.commands.bench import DTYPES, bench as run_bench, parse_list
    from adcli.inference.export import BACKENDS
    from adcli.core.progress import print_table

    rows, facts = run_bench(model, parse_list(batch, "batch"), parse_list(dtype, "dtype", list(DTYPES)), threads, images,
                            device, parse_list(backend, "backend", list(BACKENDS)), recipe, profile, categories, train_images)
    if as_json:
        print(json.dumps({**facts, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2))
        return
    console = Console()
    table = Table(title=f"adcli bench {facts['run']}: {facts['method']} ({facts['profile'] or 'paper'}), "
                        f"{facts['image_size']} px, {facts['device']}, {facts['threads']} threads, torch {facts['torch']}")
    for column in ("backend", "batch", "dtype", "GFLOP/img", "ms/img", "img/s", "peak RSS MB", "GFLOP/s", "matmul peak", "of peak"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.backend, str(r.batch), r.dtype, f"{r.gflop_per_image:.3f}", f"{r.ms_per_image:.1f}", f"{r.images_per_s:.1f}",
                      f"{r.peak_rss_mb:.0f}", f"{r.achieved_gflops:.1f}", f"{r.matmul_peak_gflops:.0f}", f"{100 * r.fraction_of_peak:.0f}%")
    print_table(console, table)


@app.command(epilog="Example: adcli export runs/knn --format onnx,openvino")
def export(
    model: Annotated[Path, typer.Argument(help="Trained model (run folder).")],
    format: Annotated[str, typer.Option("--format", help="onnx and/or openvino, comma-separated.")] = "onnx",
):
    r"""Write the model's scoring as one graph (RUN/export/): ONNX for onnxruntime, OpenVINO IR. It takes a
    batch of any size and each image's category; it is checked against torch before it is written.
    Then: adcli inspect ... --backend onnx. Needs `pip install 'adcli\[onnx]'` (and `adcli\[openvino]`)."""
    # The backslashes keep Typer's rich help from reading the extras' brackets as markup (and dropping them).
    from adcli.commands.bench import parse_list
    from adcli.inference.export import FORMATS, export as run_export

    info = run_export(model, parse_list(format, "format", list(FORMATS)))
    for check in info["checked"]:
        console.print(f"{check['backend']}: scores within {check['max_score_diff']:.2g} of torch "
                      f"(maps {check['max_map_diff']:.2g}) on a batch of {check['batch']}", highlight=False)
    console.print(f"exported to {model / 'export'}")


weights_app = typer.Typer(no_args_is_help=True, help="Pretrained weights for air-gapped PCs.", context_settings=HELP_OPTIONS)
app.add_typer(weights_app, name="weights")


@weights_app.command("pull")
def weights_pull(
    networks: Annotated[list[str], typer.Argument(help="Network names: mobilenet_v2, wide_resnet101_2, timm:NAME, ...")],
    to: Annotated[Path, typer.Option("--to", help="Folder to put the files in (then copy it and set ADCLI_WEIGHTS_DIR).")],
):
    """Download weights on a machine with internet, to carry them to one without."""
    from adcli.model.nets.weights import pull

    for network in networks:
        console.print(f"{network}: {pull(network, to)}")


@weights_app.command("list")
def weights_list():
    """List the weights files available here, with sizes and SHA-256."""
    from adcli.model.nets.weights import local_weights, sha256_file

    table = Table(title="local weights")
    for col in ("source", "file", "MB", "sha256"):
        table.add_column(col, overflow="fold")
    for source, path in local_weights():
        table.add_row(source, str(path), f"{path.stat().st_size / 1e6:.1f}", sha256_file(path)[:16])
    Console(soft_wrap=True).print(table)


@weights_app.command("pack", epilog="Example: adcli weights pack runs/diad_sd")
def weights_pack(run: Annotated[Path, typer.Argument(help="A finished run folder.")]):
    """Copy the pretrained weights a model references (DiAD's Stable Diffusion) into its run folder,
    so the folder alone is enough on another PC. Scores and calibration stay valid."""
    from adcli.bundle.model_bundle import Bundle

    folder = Bundle(run)
    references = folder.read_meta().get("pretrained", [])
    if not references:
        console.print(f"{run} references no pretrained weights: it already holds every weight")
        return
    written = folder.pack()
    for reference in references:
        where = folder.packed_folder(reference["part"])
        state = "copied" if where in written else "already packed"
        console.print(f"{reference['part']}: {state} in {where} (SHA-256 {reference['sha256'][:16]}…)")


def main() -> None:
    import logging

    # adcli's own log lines (e.g. where pretrained weights were found) go to stderr, one line each.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("adcli").addHandler(handler)
    logging.getLogger("adcli").setLevel(logging.INFO)
    try:
        app()
    except AdcliError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except Stopped as exc:
        console.print(f"stopped by {exc}")
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            _crash(exc)
        where = f": {exc.filename}" if exc.filename else ""
        console.print(f"[red]error:[/] {escape(str(exc.strerror or exc) + where)}", highlight=False)
        sys.exit(OutputError.exit_code)
    except Exception as exc:  # a bug: never exit 1, which means "defects found"
        _crash(exc)


# Failures to write results that a user fixes on the machine, not in adcli.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
CRASH_EXIT_CODE = 4


def _crash(exc: BaseException) -> None:
    """One line on stderr, the traceback in a log file, exit 4."""
    import tempfile
    import time
    import traceback

    folder = Path(os.environ.get("ADCLI_LOG_DIR") or tempfile.gettempdir())
    log = folder / f"adcli-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        log.write_text(f"adcli {__version__}: {' '.join(sys.argv)}\n" + "".join(traceback.format_exception(exc)))
        where = f"traceback in {log}"
    except OSError:
        where = "traceback: " + "".join(traceback.format_exception(exc)).replace("\n", " | ")
    # Messages may hold brackets (paths, C++ source locations) that rich would read as markup.
    console.print(f"[red]internal error:[/] {escape(f'{type(exc).__name__}: {exc} ({where})')}; please report it", highlight=False)
    sys.exit(CRASH_EXIT_CODE)
