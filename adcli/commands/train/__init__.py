"""`adcli train`: the one training path, shared by every method; its stages run in order, resumably,
deterministically.

A method declares its stages (adcli/model/methods/base.py); adcli/commands/train/stages.py runs them,
and every gradient stage runs the one optimizer loop in adcli/commands/train/loop.py. What training
says goes to the console and RUN/train.log (adcli/commands/train/output.py).

Several processes (`torchrun`, adcli/core/distributed.py): every rank runs this same code; the gradient
stages run through DistributedDataParallel, each rank on its share of every global batch; rank 0
alone writes the run folder and speaks.
"""

from __future__ import annotations

import contextlib
import platform
import signal
import threading
import time
from pathlib import Path

import torch
from rich.console import Console

from adcli import __version__
from adcli.bundle.training_state import TrainingRun
from adcli.commands.train.output import TrainOutput
from adcli.commands.train.stages import copy_stages, fingerprints, micro_batch_count, run_stages, synthesizer_for
from adcli.core.device import place, resolve_device, seeded
from adcli.core.distributed import Ranks
from adcli.core.errors import BundleError, DataError, Stopped
from adcli.core.progress import track
from adcli.data.batches import Synthesizer, TrainImages
from adcli.data.manifest import load_manifest
from adcli.model.methods.base import GradientStage, StageContext
from adcli.model.recipe import LoadedRecipe
from adcli.model.registry import build_method


def _resume_point(run: TrainingRun) -> str:
    """Where `--resume` would start, for the log line of a stopped run."""
    position = run.checkpoint_position()
    if position is None:
        return "from the kept stages, or the start (no checkpoint yet)"
    where = f"stage {position['stage']}, " if position.get("stage") else ""
    return f"from the checkpoint ({where}epoch {position['epoch'] + 1}, step {position['step_in_epoch']})"


def train(prepared: str | Path, out: str | Path, recipe: LoadedRecipe | None = None, resume: bool = False,
          device: str = "auto", console: Console | None = None, stages_from: str | Path | None = None) -> Path:
    """Train the recipe's method on the `train` split of a prepared dataset; write a model to `out`.

    stages_from: a run of a multi-stage method whose kept stage outputs are copied where this recipe
    and data would reproduce them (e.g. an ablation that changes only the last stage).
    """
    console = console or Console(stderr=True)
    run = TrainingRun(out)
    ranks, dev = Ranks.from_environment(resolve_device(device))
    try:
        with _sigterm_stops():
            return _train(prepared, run, recipe, resume, dev, console if ranks.is_main else Console(quiet=True),
                          stages_from, ranks)
    finally:
        ranks.close()


@contextlib.contextmanager
def _sigterm_stops():
    """SIGTERM (a scheduler, `kill`, a container stop) ends training as Ctrl-C does: as an exception, so
    train.log records how the run ended and files are closed. Signal handlers belong to the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the log line short
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(prepared, run: TrainingRun, recipe: LoadedRecipe | None, resume: bool, dev: torch.device, console: Console,
           stages_from, ranks: Ranks) -> Path:
    out = run.path
    run.check_resumable() if resume else run.check_new()  # every rank, so every rank stops with the same line
    output = TrainOutput(console)
    if recipe is not None and recipe.on_cpu and not resume:
        output.say(f"note: {recipe.on_cpu}")
    ranks.barrier()  # rank 0 starts the folder only after this (later), so no rank sees it half-made
    samples = [s for s in load_manifest(prepared) if s.split == "train"]  # never calib, never test
    if not samples:
        raise DataError(f"no training images in {prepared}")
    if resume:
        config, profile = run.bundle.read_config(), run.profile()
    elif recipe is None:
        raise BundleError("a recipe is needed to start a run (--recipe NAME)")
    else:
        config, profile = recipe.config, recipe.profile
    categories = sorted({s.category for s in samples})
    size = config.data.image_size
    with seeded(config.seed):
        model = build_method(config, categories)
    place(model, dev).train()
    stages = model.stages()  # may check pretrained weights: before the long image load
    micro_count = micro_batch_count(config, ranks, run, resume)
    stage_fingerprints = fingerprints(stages, config, samples, micro_count, dev)
    source = TrainingRun(stages_from) if stages_from is not None else None
    if source is not None and not any(stage.keeps for stage in stages):
        raise BundleError(f"--stages-from: {config.method} keeps no stage outputs; there is nothing to reuse")
    if source is not None and not source.has_stages:
        raise BundleError(f"--stages-from {source}: no {TrainingRun.STAGES}/ folder there (only multi-stage runs keep stage outputs)")
    # Textures can fail (a missing folder): also before the image load.
    synth = next((s.synth for s in stages if isinstance(s, GradientStage) and s.synth is not None), None)
    textures = Synthesizer.textures_for(synth, size, config.seed) if synth is not None else []
    with track(console, "loading images", len(samples)) as task:
        data = TrainImages(samples, categories, size, progress=task.advance)
    synthesizer = synthesizer_for(synth, data, textures, output)
    if ranks.is_main:
        if not resume:
            run.start(config, recipe.path, profile, micro_count)
        processes = f", {ranks.world} processes" if ranks.distributed else ""
        output.open(run.log_path, f"adcli {__version__} train{' --resume' if resume else ''}: method {config.method}, "
                    f"profile {profile or '-'}, data {Path(prepared).resolve()}, device {dev}{processes}")
    try:
        if source is not None and ranks.is_main:
            copy_stages(source, run, stages, stage_fingerprints, output)
        ranks.barrier()  # every rank now sees the run folder and the copied stages
        ctx = StageContext(dev, run.scratch, output.progress, output.say, ranks)
        position = run_stages(model, config, data, synthesizer, stages, stage_fingerprints, run, ctx, output, micro_count)

        counts: dict[str, int] = {}
        for s in samples:
            counts[s.category] = counts.get(s.category, 0) + 1
        first = stages[0]
        meta = {"categories": categories, "profile": profile, "train_seconds": round(position["seconds"], 1),
                **({"stage_seconds": {k: round(v, 1) for k, v in position["stage_seconds"].items()}}
                   if any(stage.keeps for stage in stages) else {}),
                "train_images": counts, "epochs": first.epochs if isinstance(first, GradientStage) else 0,
                "device": str(dev), **({"processes": ranks.world} if ranks.distributed else {}), "torch": torch.__version__, "python": platform.python_version(),
                "prepared": str(Path(prepared).resolve()), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **model.bundle_meta()}
        model.eval()
        if ranks.is_main:
            run.finish(model, config, meta)
        ranks.barrier()  # no rank returns before the model is written
        reused = position.get("reused")
        note = f"; stages {', '.join(reused)} finished earlier" if reused else ""
        output.say(f"model written to {out} ({position['seconds'] / 60:.1f} min of training{note})")
    except (KeyboardInterrupt, Stopped) as exc:  # Ctrl-C, SIGTERM
        signal_name = str(exc) if isinstance(exc, Stopped) else "SIGINT (Ctrl-C)"
        output.log(f"stopped by {signal_name} {output.where}; `adcli train --resume --data {prepared} --out {out}` "
                   f"continues {_resume_point(run)}")
        raise
    except BaseException as exc:  # the log says how the run ended, whatever ended it
        output.log(f"stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        output.close()
    return Path(out)
