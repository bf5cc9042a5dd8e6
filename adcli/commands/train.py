"""The one training path, shared by every method: its stages run in order, resumably, deterministically.

A method declares its stages (adcli/model/methods/base.py); this module runs them. A `FitStage` sees every
training image once; a `GradientStage` runs the optimizer loop below. A stage that `keeps` weights
saves them in RUN/stages/ with a fingerprint (seed, data, settings so far), so a rerun or another
run (`--stages-from`) reuses what it would reproduce.

Randomness: the epoch's order comes from (seed, epoch), each step's synthesis, noise and dropout from
(seed, epoch, step) (with several micro-batches: (seed, epoch, step, micro-batch)), so a resumed run
continues exactly as an uninterrupted one would.

Several processes (`torchrun`, adcli/core/distributed.py): every rank runs this same code; the gradient
stages run through DistributedDataParallel, each rank on its share of every global batch; rank 0
alone writes the run folder and speaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import platform
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.text import Text

from adcli import __version__
from adcli.core.config import EngineConfig, SynthConfig
from adcli.data.batches import Synthesizer, TrainImages
from adcli.data.manifest import load_manifest
from adcli.core.distributed import Ranks, micro_batches
from adcli.core.errors import AdcliError, BundleError, DataError, Stopped
from adcli.model.methods.base import FitStage, GradientStage, Stage, StageContext, StageData
from adcli.core.progress import track
from adcli.model.recipe import LoadedRecipe
from adcli.model.registry import get_method
from adcli.bundle.training_state import TrainingRun
from adcli.core.device import place, resolve_device, seeded


class TrainOutput:
    """What training tells: the console, and the same lines, time-stamped and without colour, in
    RUN/train.log (appended to on --resume). Lines said before the run folder exists wait for it."""

    def __init__(self, console: Console):
        self.console = console
        self.file = None
        self.pending: list[str] = []
        self.where = "before training"  # for the log line of a stopped run: "in stage X, epoch 3/12"

    def open(self, path: Path, header: str) -> None:
        self.file = open(path, "a", encoding="utf-8")
        self.log(header)
        for line in self.pending:
            self._write(line)
        self.pending = []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _write(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()  # a killed run keeps every line said before it

    def log(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"
        self._write(line) if self.file is not None else self.pending.append(line)

    def say(self, text: str) -> None:
        """`text` may hold rich markup ([yellow]warning:[/]); the log gets it plain."""
        self.console.print(text, highlight=False)
        self.log(Text.from_markup(text).plain)

    def progress(self, description: str, total: int, fields: str = "", completed: int = 0):
        return track(self.console, description, total, completed=completed, fields=fields, transient=False,
                     log=self.log)


def _engine(config) -> EngineConfig:
    return getattr(config, "engine", None) or EngineConfig()


def _amp_dtype(engine: EngineConfig, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype of a CUDA run (None: fp32; CPU training is always fp32)."""
    if dev.type != "cuda" or engine.amp == "off":
        return None
    if engine.amp == "fp16" or (engine.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _micro_batches(config, ranks: Ranks, run: TrainingRun, resume: bool) -> int:
    """Micro-batches per global batch: processes × accumulate, or what the resumed run started with, so
    a run started on N processes continues the same on any M that divides its count."""
    engine = _engine(config)
    if not resume:
        return ranks.world * engine.accumulate
    count = run.micro_batches(engine.accumulate)
    if count % ranks.world:
        fits = ", ".join(str(m) for m in range(1, count + 1) if count % m == 0)
        raise AdcliError(f"{run} cuts each batch into {count} micro-batches (processes × engine.accumulate when it "
                         f"started); resume it on {fits} process(es), not {ranks.world}")
    return count


def _fingerprints(stages: list[Stage], config, samples: list, micro_count: int = 1,
                  dev: torch.device = torch.device("cpu")) -> list[str]:
    """Stage i's fingerprint covers the data, the seed and every setting of stages 0..i, so a kept stage
    output is reused only where it would come out the same (the engine's settings only where they
    differ from a plain single-process fp32 run, so such runs keep their fingerprints)."""
    base = {"seed": config.seed, "data": dataclasses.asdict(config.data),
            "train_images": sorted((s.category, s.path) for s in samples)}
    engine = _engine(config)
    loop = {"micro_batches": micro_count, "ema_decay": engine.ema_decay,
            "amp": str(_amp_dtype(engine, dev)), "clip_grad_norm": engine.clip_grad_norm}
    if loop != {"micro_batches": 1, "ema_decay": None, "amp": "None", "clip_grad_norm": None}:
        base["loop"] = loop
    digest = hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()
    out = []
    for stage in stages:
        text = json.dumps({"previous": digest, "name": stage.name, "settings": stage.settings}, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        out.append(digest)
    return out


def _copy_stages(source: TrainingRun, run: TrainingRun, stages: list[Stage], fingerprints: list[str], out: TrainOutput) -> None:
    """--stages-from: copy the leading stage outputs of another run that this recipe would reproduce."""
    copied = 0
    for stage, fingerprint in zip(stages, fingerprints):
        if not stage.keeps or source.finished_stage(stage.name, fingerprint) is None:
            break
        run.copy_stage_from(source, stage.name)
        out.say(f"stage {stage.name}: reusing {source.stage_file(stage.name)}")
        copied += 1
    if not copied:
        out.say(f"[yellow]warning:[/] --stages-from {source}: its first stage ({stages[0].name}) was trained with "
                      "other settings or data; training every stage")


def _synthesizer(synth: SynthConfig | None, data: TrainImages, textures: list, out: TrainOutput) -> Synthesizer | None:
    if synth is None:
        return None
    objects = Synthesizer.object_categories(synth, data)
    source = synth.texture_dir or f"{len(textures)} textures made in code"
    out.say(f"synthetic anomalies: textures from {source}; on the object only: {', '.join(sorted(objects)) or 'none'}")
    return Synthesizer(synth, textures, {data.categories.index(c) for c in objects if c in data.categories})


def _run_stages(model, config, data: TrainImages, synthesizer: Synthesizer | None, stages: list[Stage],
                fingerprints: list[str], run: TrainingRun, ctx: StageContext, out: TrainOutput, micro_count: int = 1) -> dict:
    """Run each stage not already kept in RUN/stages/; -> {"seconds", "stage_seconds", "reused"}."""
    checkpoint_position = run.checkpoint_position()
    stage_seconds, reused = {}, []
    for index, (stage, fingerprint) in enumerate(zip(stages, fingerprints)):
        kept = run.finished_stage(stage.name, fingerprint) if stage.keeps else None
        if kept is not None:
            run.load_stage(model, stage.name)
            stage_seconds[stage.name] = float(kept.get("seconds", 0.0))
            reused.append(stage.name)
            out.say(f"stage {stage.name}: done ({run.stage_file(stage.name)})")
            continue
        start = time.monotonic()
        if isinstance(stage, FitStage):
            out.where = f"in stage {stage.name}"
            stage.fit(data, ctx)
            stage_seconds[stage.name] = time.monotonic() - start
        else:
            resume_here = checkpoint_position is not None and checkpoint_position.get("stage", stages[0].name) == stage.name
            stage_data = data if stage.make_data is None else stage.make_data(data, ctx)
            data_seconds = time.monotonic() - start  # a stage's data (reflow pairs) counts in its time
            position = _train_stage(model, config, index, stage, stage_data, synthesizer if stage.synth else None,
                                    run, resume_here, ctx, out, micro_count)
            stage_seconds[stage.name] = position["seconds"] + data_seconds
        if stage.keeps and ctx.ranks.is_main:
            run.save_stage(model, stage.name, stage.keeps, fingerprint, stage_seconds[stage.name])
    return {"seconds": sum(stage_seconds.values()), "stage_seconds": stage_seconds, "reused": reused}


class _StageLoss(torch.nn.Module):
    """A stage's loss as a module's forward, so DistributedDataParallel can wrap it (DDP reduces the
    gradients of whatever its forward computed)."""

    def __init__(self, model: torch.nn.Module, stage: GradientStage):
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.stage.losses(batch, generator)


def _train_stage(model, config, stage_index: int, stage: GradientStage, data: StageData, synthesizer: Synthesizer | None,
                 run: TrainingRun, resume: bool, ctx: StageContext, out: TrainOutput, micro_count: int = 1) -> dict:
    """One stage's gradient loop: epochs of batches, checkpoints, exact resume. A stage that keeps its
    weights is named in the log and in results.csv's `stage` column."""
    dev, ranks, engine = ctx.device, ctx.ranks, _engine(config)
    label = f"stage {stage.name} of {config.method}" if stage.keeps else config.method
    batch_size = min(stage.batch_size, len(data))
    steps_per_epoch = max(1, len(data) // batch_size)
    total_steps = steps_per_epoch * stage.epochs
    accumulate = micro_count // ranks.world  # per process
    micro_batches(np.arange(batch_size), ranks.world, accumulate, ranks.rank)  # a batch too small to share: say so now
    groups, lr_factors = stage.param_groups(total_steps)
    model.requires_grad_(False)  # only this stage's parameters learn; the rest pass gradients through
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    base_lrs = [g["lr"] for g in groups]
    # AdamW's default weight decay is 0.01: a group without one gets 0, as with Adam.
    optimizer = (torch.optim.AdamW([{"weight_decay": 0.0, **g} for g in groups]) if stage.optimizer == "adamw"
                 else torch.optim.Adam(groups))
    trained = [p for g in groups for p in g["params"]]
    amp_dtype = _amp_dtype(engine, dev)
    clip = stage.clip_grad_norm if stage.clip_grad_norm is not None else engine.clip_grad_norm
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = [p.detach().clone() for p in trained] if engine.ema_decay is not None else None
    loss_module = _StageLoss(model, stage)
    # Built after requires_grad is set: DDP reduces the gradients of exactly this stage's parameters.
    runner = (torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                        find_unused_parameters=stage.unused_parameters)
              if ranks.distributed else loss_module)
    position = {"stage": stage.name, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0, "history": []}
    if resume:
        position = run.load_checkpoint(model, optimizer)
        extra_tensors, extra = run.checkpoint_extras()
        if ema is not None:
            if "ema.0" in extra_tensors:
                for i, e in enumerate(ema):
                    e.copy_(extra_tensors[f"ema.{i}"])
            else:
                ema = [p.detach().clone() for p in trained]  # the interrupted run had none: start it here
        if scaler is not None and "scaler" in extra:
            scaler.load_state_dict(extra["scaler"])
        out.say(f"resuming {run} at stage {stage.name}, epoch {position['epoch'] + 1}, step {position['step_in_epoch']}")

    def save_checkpoint():
        if ranks.is_main:
            run.save_checkpoint(model, optimizer, position,
                                extra_tensors={f"ema.{i}": e for i, e in enumerate(ema)} if ema is not None else None,
                                extra={"scaler": scaler.state_dict()} if scaler is not None else None)

    n_params = sum(p.numel() for g in groups for p in g["params"])
    categories = list(data.categories)
    of_categories = f" of {len(categories)} categories ({', '.join(categories)})" if categories else ""
    sharing = ""
    if micro_count > 1:
        sharing = (f", each batch of {batch_size} in {micro_count} micro-batches ({ranks.world} process"
                   f"{'es' if ranks.world > 1 else ''} × accumulate {accumulate})")
    precision = f", autocast {str(amp_dtype).removeprefix('torch.')}" if amp_dtype is not None else ""
    out.say(f"training {label} on {len(data)} {'images' if isinstance(data, TrainImages) else 'samples'}{of_categories} "
            f"at {config.data.image_size}px, {n_params / 1e6:.1f} M trained parameters, {stage.epochs} epochs, "
            f"device {dev}{sharing}{precision}")
    last_save = time.monotonic()
    start = time.monotonic() - position["seconds"]
    fields = "epoch {epoch}/{epochs}, step {step}/{steps}, loss {loss:.4f}, {ips:.1f} img/s"
    with out.progress(f"train {stage.name}" if stage.keeps else "train", total_steps, fields,
                      completed=position["global_step"]) as task:
        while position["epoch"] < stage.epochs:
            epoch = position["epoch"]
            out.where = f"in {label}, epoch {epoch + 1}/{stage.epochs}"
            # Stage 0 keeps the single-stage keys, so one-stage runs reproduce across versions.
            key = [config.seed, epoch] if stage_index == 0 else [config.seed, stage_index, epoch]
            order = np.random.default_rng(key).permutation(len(data))
            sums: dict[str, float] = {}
            epoch_start = time.monotonic()
            first_step = position["step_in_epoch"]
            for step in range(first_step, steps_per_epoch):
                t0 = time.monotonic()
                indices = order[step * batch_size:(step + 1) * batch_size]
                # One micro-batch keeps the (seed, epoch, step) keys of earlier versions.
                shares = ([(None, indices)] if micro_count == 1
                          else micro_batches(indices, ranks.world, accumulate, ranks.rank))
                for g, base, factor in zip(optimizer.param_groups, base_lrs, lr_factors):
                    g["lr"] = base * factor(position["global_step"])
                optimizer.zero_grad(set_to_none=True)
                step_losses: dict[str, float] = {}
                for n, (number, part) in enumerate(shares):
                    rng = np.random.default_rng([*key, step] if number is None else [*key, step, number])
                    seed = int(rng.integers(2**62))
                    gen = torch.Generator(device=dev).manual_seed(seed)
                    torch.manual_seed(seed + 1)  # dropout: from the step too, or a resumed run would differ
                    batch = data.batch(part, rng, synthesizer)
                    batch = type(batch)(**{k: v.to(dev, non_blocking=True) for k, v in vars(batch).items()})
                    # Gradients are reduced across ranks on the last micro-batch only.
                    sync = runner.no_sync() if ranks.distributed and n < len(shares) - 1 else contextlib.nullcontext()
                    with sync:
                        with torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext():
                            losses = runner(batch, gen)
                        if not torch.isfinite(losses["loss"]):  # before the step: the last checkpoint stays good
                            raise DataError(f"training diverged (loss {losses['loss'].item()}) in {label}, epoch {epoch + 1}; "
                                            "lower the learning rate")
                        loss = losses["loss"].float() / len(shares)
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    for k, v in losses.items():
                        step_losses[k] = step_losses.get(k, 0.0) + float(v.detach()) / len(shares)
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clipping sees the true gradient norm
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(trained, clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if ema is not None:
                    with torch.no_grad():
                        for e, p in zip(ema, trained):
                            e.lerp_(p.detach(), 1.0 - engine.ema_decay)
                for k, v in step_losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                position["global_step"] += 1
                position["step_in_epoch"] = step + 1
                position["seconds"] = time.monotonic() - start
                task.advance(loss=step_losses["loss"], epoch=epoch + 1, epochs=stage.epochs, step=step + 1,
                             steps=steps_per_epoch, ips=batch_size / max(time.monotonic() - t0, 1e-9))
                if _checkpoint_due(config, last_save):
                    save_checkpoint()
                    last_save = time.monotonic()
            n_run = max(1, steps_per_epoch - first_step)  # a resumed epoch averages the steps run since
            means = ranks.mean({k: v / n_run for k, v in sums.items()}, dev)  # rank-local losses: the mean over ranks
            row = {**({"stage": stage.name} if stage.keeps else {}), "epoch": epoch + 1,
                   **{k: round(v, 6) for k, v in means.items()},
                   "lr": [g["lr"] for g in optimizer.param_groups][0], "seconds": round(time.monotonic() - epoch_start, 2)}
            position["history"].append(row)
            position.update(epoch=epoch + 1, step_in_epoch=0)
            if ranks.is_main:
                run.write_history(position["history"])
            save_checkpoint()
            last_save = time.monotonic()
    if ema is not None:  # the stage's result is the average
        with torch.no_grad():
            for e, p in zip(ema, trained):
                p.copy_(e)
    model.requires_grad_(True)
    return position


def _resume_point(run: TrainingRun) -> str:
    """Where `--resume` would start, for the log line of a stopped run."""
    position = run.checkpoint_position()
    if position is None:
        return "from the kept stages, or the start (no checkpoint yet)"
    where = f"stage {position['stage']}, " if position.get("stage") else ""
    return f"from the checkpoint ({where}epoch {position['epoch'] + 1}, step {position['step_in_epoch']})"


def _checkpoint_due(config, last_save: float) -> bool:
    minutes = config.train.checkpoint_minutes
    return minutes > 0 and time.monotonic() - last_save > 60 * minutes


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
    spec = get_method(config.method)
    categories = sorted({s.category for s in samples})
    size = config.data.image_size
    with seeded(config.seed):
        model = spec.method_cls(config, categories)
    place(model, dev).train()
    stages = model.stages()  # may check pretrained weights: before the long image load
    micro_count = _micro_batches(config, ranks, run, resume)
    fingerprints = _fingerprints(stages, config, samples, micro_count, dev)
    source = TrainingRun(stages_from) if stages_from is not None else None
    if source is not None and not any(stage.keeps for stage in stages):
        raise BundleError(f"--stages-from: {config.method} keeps no stage outputs; there is nothing to reuse")
    if source is not None and not source.has_stages:
        raise BundleError(f"--stages-from {source}: no {TrainingRun.STAGES}/ folder there (only multi-stage runs keep stage outputs)")
    # Textures can fail (a missing folder): also before the image load.
    synth = next((s.synth for s in stages if isinstance(s, GradientStage) and s.synth is not None), None)
    textures = Synthesizer.textures_for(synth, size, config.seed) if synth is not None else []
    output = TrainOutput(console)
    with track(console, "loading images", len(samples)) as task:
        data = TrainImages(samples, categories, size, progress=task.advance)
    synthesizer = _synthesizer(synth, data, textures, output)
    if ranks.is_main:
        if not resume:
            run.start(config, recipe.path, profile, micro_count)
        processes = f", {ranks.world} processes" if ranks.distributed else ""
        output.open(run.log_path, f"adcli {__version__} train{' --resume' if resume else ''}: method {config.method}, "
                    f"profile {profile or '-'}, data {Path(prepared).resolve()}, device {dev}{processes}")
    try:
        if source is not None and ranks.is_main:
            _copy_stages(source, run, stages, fingerprints, output)
        ranks.barrier()  # every rank now sees the run folder and the copied stages
        ctx = StageContext(dev, run.scratch, output.progress, output.say, ranks)
        position = _run_stages(model, config, data, synthesizer, stages, fingerprints, run, ctx, output, micro_count)

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
