"""The one optimizer loop every gradient stage runs: epochs of batches, checkpoints, exact resume.

It reads top to bottom like a plain PyTorch loop; each concern it needs lives in a helper below:
`Optimisation` (optimizer, learning-rate schedule, AMP gradient scaler, clipping, EMA), `accumulate_gradients`
(one global batch as micro-batches, seeded, under DDP and autocast), `Checkpoints` (when and what to save)
and `epoch_row` (one line of results.csv).

Randomness: the epoch's order comes from (seed, epoch), each step's synthesis, noise and dropout from
(seed, epoch, step) (with several micro-batches: (seed, epoch, step, micro-batch)), so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from adcli.bundle.training_state import TrainingRun
from adcli.commands.train.output import TrainOutput
from adcli.core.config import EngineConfig
from adcli.core.distributed import Ranks, micro_batches
from adcli.core.errors import DataError
from adcli.data.batches import Synthesizer, TrainImages
from adcli.model.methods.base import GradientStage, StageContext, StageData


def amp_dtype(engine: EngineConfig, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype of a CUDA run (None: fp32; CPU training is always fp32)."""
    if dev.type != "cuda" or engine.amp == "off":
        return None
    if engine.amp == "fp16" or (engine.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def train_stage(model, config, stage_index: int, stage: GradientStage, data: StageData, synthesizer: Synthesizer | None,
                run: TrainingRun, resume: bool, ctx: StageContext, out: TrainOutput, micro_count: int = 1) -> dict:
    """One stage's gradient loop. A stage that keeps its weights is named in the log and in results.csv's
    `stage` column. -> the final position (epoch, steps, seconds, history)."""
    dev, ranks = ctx.device, ctx.ranks
    label = f"stage {stage.name} of {config.method}" if stage.keeps else config.method
    batch_size = min(stage.batch_size, len(data))
    steps_per_epoch = max(1, len(data) // batch_size)
    accumulate = micro_count // ranks.world  # per process
    micro_batches(np.arange(batch_size), ranks.world, accumulate, ranks.rank)  # a batch too small to share: say so now
    opt = Optimisation(model, stage, config.engine, dev, steps_per_epoch * stage.epochs)
    runner = _runner(model, stage, ranks, dev)
    position = {"stage": stage.name, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0, "history": []}
    if resume:
        position = opt.resume(run)
        out.say(f"resuming {run} at stage {stage.name}, epoch {position['epoch'] + 1}, step {position['step_in_epoch']}")
    checkpoints = Checkpoints(run, model, opt, ranks, stage.checkpoint_minutes)
    _say_what_trains(out, label, config, stage, data, dev, opt, ranks, batch_size, micro_count, accumulate)
    start = time.monotonic() - position["seconds"]
    fields = "epoch {epoch}/{epochs}, step {step}/{steps}, loss {loss:.4f}, {ips:.1f} img/s"
    with out.progress(f"train {stage.name}" if stage.keeps else "train", steps_per_epoch * stage.epochs, fields,
                      completed=position["global_step"]) as task:
        while position["epoch"] < stage.epochs:
            epoch = position["epoch"]
            out.where = f"in {label}, epoch {epoch + 1}/{stage.epochs}"
            # Stage 0 keeps the single-stage keys, so one-stage runs reproduce across versions.
            key = [config.seed, epoch] if stage_index == 0 else [config.seed, stage_index, epoch]
            order = np.random.default_rng(key).permutation(len(data))
            sums: dict[str, float] = {}
            epoch_start, first_step = time.monotonic(), position["step_in_epoch"]
            for step in range(first_step, steps_per_epoch):
                t0 = time.monotonic()
                indices = order[step * batch_size:(step + 1) * batch_size]
                # One micro-batch keeps the (seed, epoch, step) keys of earlier versions.
                shares = ([(None, indices)] if micro_count == 1
                          else micro_batches(indices, ranks.world, accumulate, ranks.rank))
                opt.start_step(position["global_step"])
                step_losses = accumulate_gradients(runner, data, shares, [*key, step], synthesizer, dev, opt, ranks,
                                                   f"{label}, epoch {epoch + 1}")
                opt.step()
                for k, v in step_losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                position.update(global_step=position["global_step"] + 1, step_in_epoch=step + 1,
                                seconds=time.monotonic() - start)
                task.advance(loss=step_losses["loss"], epoch=epoch + 1, epochs=stage.epochs, step=step + 1,
                             steps=steps_per_epoch, ips=batch_size / max(time.monotonic() - t0, 1e-9))
                checkpoints.save_if_due(position)
            n_run = max(1, steps_per_epoch - first_step)  # a resumed epoch averages the steps run since
            position["history"].append(epoch_row(stage, epoch, ranks.mean({k: v / n_run for k, v in sums.items()}, dev),
                                                 opt.optimizer, epoch_start))
            position.update(epoch=epoch + 1, step_in_epoch=0)
            if ranks.is_main:
                run.write_history(position["history"])
            checkpoints.save(position)
    opt.finish()
    model.requires_grad_(True)
    return position


class Optimisation:
    """The optimizer of one stage's parameters and what goes with each step: the learning-rate schedule,
    the gradient scaler of fp16 autocast, gradient clipping and the EMA of the weights."""

    def __init__(self, model, stage: GradientStage, engine: EngineConfig, dev: torch.device, total_steps: int):
        groups, self.lr_factors = stage.param_groups(total_steps)
        model.requires_grad_(False)  # only this stage's parameters learn; the rest pass gradients through
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        self.base_lrs = [g["lr"] for g in groups]
        # AdamW's default weight decay is 0.01: a group without one gets 0, as with Adam.
        self.optimizer = (torch.optim.AdamW([{"weight_decay": 0.0, **g} for g in groups]) if stage.optimizer == "adamw"
                          else torch.optim.Adam(groups))
        self.model = model
        self.trained = [p for g in groups for p in g["params"]]
        self.amp_dtype = amp_dtype(engine, dev)
        self.clip = stage.clip_grad_norm if stage.clip_grad_norm is not None else engine.clip_grad_norm
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema_decay = engine.ema_decay
        self.ema = [p.detach().clone() for p in self.trained] if engine.ema_decay is not None else None

    @property
    def trained_parameters(self) -> int:
        return sum(p.numel() for p in self.trained)

    def start_step(self, global_step: int) -> None:
        for g, base, factor in zip(self.optimizer.param_groups, self.base_lrs, self.lr_factors):
            g["lr"] = base * factor(global_step)
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clipping sees the true gradient norm
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.trained, self.clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.trained):
                    e.lerp_(p.detach(), 1.0 - self.ema_decay)

    def finish(self) -> None:
        """The stage's result is the EMA, where there is one."""
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.trained):
                    p.copy_(e)

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
        """(extra tensors, extra JSON) of a checkpoint: the EMA weights and the gradient scaler."""
        return ({f"ema.{i}": e for i, e in enumerate(self.ema)} if self.ema is not None else None,
                {"scaler": self.scaler.state_dict()} if self.scaler is not None else None)

    def resume(self, run: TrainingRun) -> dict:
        """Load the checkpoint's weights, optimizer, EMA and scaler; -> its position."""
        position = run.load_checkpoint(self.model, self.optimizer)
        extra_tensors, extra = run.checkpoint_extras()
        if self.ema is not None:
            if "ema.0" in extra_tensors:
                for i, e in enumerate(self.ema):
                    e.copy_(extra_tensors[f"ema.{i}"])
            else:
                self.ema = [p.detach().clone() for p in self.trained]  # the interrupted run had none: start it here
        if self.scaler is not None and "scaler" in extra:
            self.scaler.load_state_dict(extra["scaler"])
        return position


class _StageLoss(torch.nn.Module):
    """A stage's loss as a module's forward, so DistributedDataParallel can wrap it (DDP reduces the
    gradients of whatever its forward computed)."""

    def __init__(self, model: torch.nn.Module, stage: GradientStage):
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.stage.losses(batch, generator)


def _runner(model, stage: GradientStage, ranks: Ranks, dev: torch.device) -> torch.nn.Module:
    """The stage's loss, wrapped in DDP on several processes. Built after requires_grad is set (by
    Optimisation): DDP reduces the gradients of exactly this stage's parameters."""
    loss_module = _StageLoss(model, stage)
    if not ranks.distributed:
        return loss_module
    return torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                     find_unused_parameters=stage.unused_parameters)


def accumulate_gradients(runner, data: StageData, shares: list, step_key: list, synthesizer: Synthesizer | None,
                         dev: torch.device, opt: Optimisation, ranks: Ranks, where: str) -> dict[str, float]:
    """Forward and backward over this process's micro-batches of one global batch; -> the step's losses
    (means over the micro-batches). Each micro-batch is seeded from the step (and its number)."""
    step_losses: dict[str, float] = {}
    for n, (number, part) in enumerate(shares):
        rng = np.random.default_rng(step_key if number is None else [*step_key, number])
        seed = int(rng.integers(2**62))
        gen = torch.Generator(device=dev).manual_seed(seed)
        torch.manual_seed(seed + 1)  # dropout: from the step too, or a resumed run would differ
        batch = data.batch(part, rng, synthesizer)
        batch = type(batch)(**{k: v.to(dev, non_blocking=True) for k, v in vars(batch).items()})
        # Gradients are reduced across ranks on the last micro-batch only.
        sync = runner.no_sync() if ranks.distributed and n < len(shares) - 1 else contextlib.nullcontext()
        with sync:
            autocast = torch.autocast(dev.type, dtype=opt.amp_dtype) if opt.amp_dtype is not None else contextlib.nullcontext()
            with autocast:
                losses = runner(batch, gen)
            if not torch.isfinite(losses["loss"]):  # before the step: the last checkpoint stays good
                raise DataError(f"training diverged (loss {losses['loss'].item()}) in {where}; lower the learning rate")
            opt.backward(losses["loss"].float() / len(shares))
        for k, v in losses.items():
            step_losses[k] = step_losses.get(k, 0.0) + float(v.detach()) / len(shares)
    return step_losses


class Checkpoints:
    """A checkpoint at each epoch's end and at least every `minutes` (0: only at epochs' ends); rank 0 writes."""

    def __init__(self, run: TrainingRun, model, opt: Optimisation, ranks: Ranks, minutes: float):
        self.run, self.model, self.opt, self.ranks, self.minutes = run, model, opt, ranks, minutes
        self.last = time.monotonic()

    def save_if_due(self, position: dict) -> None:
        if self.minutes > 0 and time.monotonic() - self.last > 60 * self.minutes:
            self.save(position)

    def save(self, position: dict) -> None:
        if self.ranks.is_main:
            extra_tensors, extra = self.opt.checkpoint_state()
            self.run.save_checkpoint(self.model, self.opt.optimizer, position, extra_tensors=extra_tensors, extra=extra)
        self.last = time.monotonic()


def epoch_row(stage: GradientStage, epoch: int, means: dict[str, float], optimizer, epoch_start: float) -> dict:
    """results.csv's row of an epoch: its mean losses (over ranks), the first group's lr, its seconds."""
    return {**({"stage": stage.name} if stage.keeps else {}), "epoch": epoch + 1,
            **{k: round(v, 6) for k, v in means.items()},
            "lr": [g["lr"] for g in optimizer.param_groups][0], "seconds": round(time.monotonic() - epoch_start, 2)}


def _say_what_trains(out: TrainOutput, label: str, config, stage: GradientStage, data: StageData, dev: torch.device,
                     opt: Optimisation, ranks: Ranks, batch_size: int, micro_count: int, accumulate: int) -> None:
    categories = list(data.categories)
    of_categories = f" of {len(categories)} categories ({', '.join(categories)})" if categories else ""
    sharing = ""
    if micro_count > 1:
        sharing = (f", each batch of {batch_size} in {micro_count} micro-batches ({ranks.world} process"
                   f"{'es' if ranks.world > 1 else ''} × accumulate {accumulate})")
    precision = f", autocast {str(opt.amp_dtype).removeprefix('torch.')}" if opt.amp_dtype is not None else ""
    out.say(f"training {label} on {len(data)} {'images' if isinstance(data, TrainImages) else 'samples'}{of_categories} "
            f"at {config.data.image_size}px, {opt.trained_parameters / 1e6:.1f} M trained parameters, {stage.epochs} epochs, "
            f"device {dev}{sharing}{precision}")
