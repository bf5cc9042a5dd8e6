"""The one training loop, shared by every method: explicit, resumable, deterministic.

Randomness: the epoch's order comes from (seed, epoch), each step's synthesis and noise from
(seed, epoch, step), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from adcli.bundle import META, read_recipe, write_bundle, write_recipe
from adcli.data.batches import TrainImages, to_tensor
from adcli.data.manifest import load_manifest
from adcli.data.synth import load_textures
from adcli.errors import BundleError, DataError
from adcli.io import atomic_write_json, atomic_write_text, load_tensors, save_tensors
from adcli.recipe import LoadedRecipe
from adcli.methods.base import Stage
from adcli.registry import get_method
from adcli.runtime import resolve_device, seeded

CHECKPOINT = Path("checkpoint") / "last.safetensors"
STAGES = "stages"  # multi-stage methods keep each finished stage's weights here


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer state into tensors + JSON-able rest (for safetensors, no pickle)."""
    state = optimizer.state_dict()
    tensors = {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_checkpoint(run: Path, model, optimizer, position: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_tensors, rest = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    # Position and optimizer settings live in the same file's metadata, so they can never disagree.
    save_tensors(run / CHECKPOINT, tensors, metadata={"position": json.dumps(position), "optimizer": json.dumps(rest)})


def _file_metadata(path: Path) -> dict:
    """A safetensors file's string metadata, without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_checkpoint(run: Path, model, optimizer) -> dict:
    path = run / CHECKPOINT
    tensors = load_tensors(path)
    meta = _file_metadata(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _restore_optimizer(optimizer, tensors, json.loads(meta["optimizer"]))
    return json.loads(meta["position"])


def _history_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))  # stages log different losses
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _check_out(out: Path, resume: bool) -> None:
    """Refuse to overwrite anything: a finished model, or an unfinished run without --resume."""
    if resume:
        if (out / META).is_file():
            raise BundleError(f"{out} holds a finished model; nothing to resume")
        if not (out / CHECKPOINT).is_file() and not (out / STAGES).is_dir():
            raise BundleError(f"nothing to resume in {out}: no {CHECKPOINT}")
    elif out.exists() and any(out.iterdir()):
        what = "a finished model" if (out / META).is_file() else "an unfinished run (continue it with --resume)"
        raise BundleError(f"{out} already holds {what}; choose another --out")


def _run_config(out: Path, recipe: LoadedRecipe | None, resume: bool):
    """-> (config, profile): the run's stored ones when resuming, else the recipe's."""
    if resume:
        return read_recipe(out), json.loads((out / "run.json").read_text()).get("profile")
    if recipe is None:
        raise BundleError("a recipe is needed to start a run (--recipe NAME)")
    return recipe.config, recipe.profile


def _start_run(out: Path, recipe: LoadedRecipe) -> None:
    """The run folder's first files; written only once everything that can fail early has passed."""
    out.mkdir(parents=True, exist_ok=True)
    write_recipe(out, recipe.config)
    atomic_write_json(out / "run.json", {"recipe_file": str(recipe.path), "profile": recipe.profile})


def _fit(model, data: TrainImages, dev: torch.device, console: Console) -> dict:
    """Methods without a training loop (memory banks): one pass over the training images."""
    start = time.monotonic()
    by_cat = {cat: to_tensor(data.images[data.category_ids == i]) for i, cat in enumerate(data.categories)}
    console.print(f"building {model.name} on {len(data)} images of {len(by_cat)} categories, device {dev}")
    with Progress(TextColumn("fit"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("fit", total=len(data))
        model.fit(by_cat, dev, progress=lambda n: bar.advance(task, n))
    return {"seconds": time.monotonic() - start}


def _single_stage(model, config, synth) -> Stage:
    """A one-stage method (DiffusionAD) as a Stage: the model's own groups and losses."""
    tc = config.train
    return Stage("train", tc.epochs, tc.batch_size, model.param_groups, model.training_losses, keeps=(),
                 settings={}, synthetic=synth is not None)


def _fingerprints(stages: list[Stage], config, samples: list) -> list[str]:
    """Stage i's fingerprint covers the data, the seed and every setting of stages 0..i, so a kept stage
    output is reused only where it would come out the same."""
    base = {"seed": config.seed, "data": dataclasses.asdict(config.data),
            "train_images": sorted((s.category, s.path) for s in samples)}
    digest = hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()
    out = []
    for stage in stages:
        text = json.dumps({"previous": digest, "name": stage.name, "settings": stage.settings}, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        out.append(digest)
    return out


def _stage_file(run: Path, stage: Stage) -> Path:
    return run / STAGES / f"{stage.name}.safetensors"


def _finished_stage(run: Path, stage: Stage, fingerprint: str) -> dict | None:
    """The metadata of a kept stage output with this fingerprint, else None."""
    path = _stage_file(run, stage)
    if not path.is_file():
        return None
    meta = _file_metadata(path)
    return meta if meta.get("fingerprint") == fingerprint else None


def _save_stage(run: Path, model, stage: Stage, fingerprint: str, seconds: float) -> None:
    kept = {k: v for k, v in model.state_dict().items() if k.startswith(stage.keeps)}
    save_tensors(_stage_file(run, stage), kept, metadata={"fingerprint": fingerprint, "seconds": str(round(seconds, 1))})


def _copy_stages(source: Path, out: Path, stages: list[Stage], fingerprints: list[str], console: Console) -> None:
    """--stages-from: copy the leading stage outputs of another run that this recipe would reproduce."""
    copied = 0
    for stage, fingerprint in zip(stages, fingerprints):
        if _finished_stage(source, stage, fingerprint) is None:
            break
        (out / STAGES).mkdir(parents=True, exist_ok=True)
        tmp = _stage_file(out, stage).with_suffix(".tmp")
        shutil.copyfile(_stage_file(source, stage), tmp)
        tmp.replace(_stage_file(out, stage))
        console.print(f"stage {stage.name}: reusing {_stage_file(source, stage)}")
        copied += 1
    if not copied:
        console.print(f"[yellow]warning:[/] --stages-from {source}: its first stage ({stages[0].name}) was trained with "
                      "other settings or data; training every stage")


def _run_stages(model, config, data: TrainImages, textures: list, synth, stages: list[Stage], fingerprints: list[str],
                out: Path, dev: torch.device, console: Console) -> dict:
    """Run each stage not already kept in RUN/stages/; -> {"seconds", "stage_seconds", "reused"}."""
    checkpoint_position = None
    if (out / CHECKPOINT).is_file():
        checkpoint_position = json.loads(_file_metadata(out / CHECKPOINT)["position"])
    stage_seconds, reused = {}, []
    for index, (stage, fingerprint) in enumerate(zip(stages, fingerprints)):
        kept = _finished_stage(out, stage, fingerprint) if stage.keeps else None
        if kept is not None:
            model.load_state_dict(load_tensors(_stage_file(out, stage)), strict=False)
            stage_seconds[stage.name] = float(kept.get("seconds", 0.0))
            reused.append(stage.name)
            console.print(f"stage {stage.name}: done ({_stage_file(out, stage)})")
            continue
        resume_here = checkpoint_position is not None and checkpoint_position.get("stage", stages[0].name) == stage.name
        data_start = time.monotonic()  # a stage's data (reflow pairs) counts in its time
        stage_data = data if stage.make_data is None else stage.make_data(data, dev, out / CHECKPOINT.parent, console)
        data_seconds = time.monotonic() - data_start if stage.make_data is not None else 0.0
        position = _train_stage(model, config, index, stage, stage_data, textures if stage.synthetic else [],
                                synth if stage.synthetic else None, out, resume_here, dev, console)
        stage_seconds[stage.name] = position["seconds"] + data_seconds
        if stage.keeps:
            _save_stage(out, model, stage, fingerprint, stage_seconds[stage.name])
    return {"seconds": sum(stage_seconds.values()), "stage_seconds": stage_seconds, "reused": reused}


def _train_stage(model, config, stage_index: int, stage: Stage, data, textures: list, synth, out: Path, resume: bool,
                 dev: torch.device, console: Console) -> dict:
    """One stage's gradient loop: epochs of batches, checkpoints, exact resume."""
    batch_size = min(stage.batch_size, len(data))
    steps_per_epoch = max(1, len(data) // batch_size)
    total_steps = steps_per_epoch * stage.epochs
    groups, lr_factors = stage.param_groups(total_steps)
    model.requires_grad_(False)  # only this stage's parameters learn; the rest pass gradients through
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    base_lrs = [g["lr"] for g in groups]
    optimizer = torch.optim.Adam(groups)
    position = {"stage": stage.name, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0, "history": []}
    if resume:
        position = load_checkpoint(out, model, optimizer)
        console.print(f"resuming {out} at stage {stage.name}, epoch {position['epoch'] + 1}, step {position['step_in_epoch']}")

    n_params = sum(p.numel() for g in groups for p in g["params"])
    what = f"stage {stage.name} of {config.method}" if stage.keeps else config.method
    categories = list(getattr(data, "categories", []))
    of_categories = f" of {len(categories)} categories ({', '.join(categories)})" if categories else ""
    console.print(f"training {what} on {len(data)} {'images' if isinstance(data, TrainImages) else 'samples'}{of_categories} "
                  f"at {config.data.image_size}px, {n_params / 1e6:.1f} M trained parameters, {stage.epochs} epochs, device {dev}")
    last_save = time.monotonic()
    start = time.monotonic() - position["seconds"]
    columns = (TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=total_steps, completed=position["global_step"], epoch=position["epoch"] + 1,
                            epochs=stage.epochs, loss=float("nan"), ips=0.0)
        while position["epoch"] < stage.epochs:
            epoch = position["epoch"]
            # Stage 0 keeps the single-stage keys, so one-stage runs reproduce across versions.
            key = [config.seed, epoch] if stage_index == 0 else [config.seed, stage_index, epoch]
            order = np.random.default_rng(key).permutation(len(data))
            sums: dict[str, float] = {}
            epoch_start = time.monotonic()
            first_step = position["step_in_epoch"]
            for step in range(first_step, steps_per_epoch):
                t0 = time.monotonic()
                rng = np.random.default_rng([*key, step])
                gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))
                batch = data.batch(order[step * batch_size:(step + 1) * batch_size], rng, textures, synth)
                batch = type(batch)(**{k: v.to(dev) for k, v in vars(batch).items()})
                for g, base, factor in zip(optimizer.param_groups, base_lrs, lr_factors):
                    g["lr"] = base * factor(position["global_step"])
                losses = stage.losses(batch, gen)
                if not torch.isfinite(losses["loss"]):  # before the step: the last checkpoint stays good
                    raise DataError(f"training diverged (loss {losses['loss'].item()}) in {what}, epoch {epoch + 1}; "
                                    "lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                position["global_step"] += 1
                position["step_in_epoch"] = step + 1
                position["seconds"] = time.monotonic() - start
                bar.update(task, advance=1, loss=float(losses["loss"].detach()), epoch=epoch + 1,
                           ips=batch_size / max(time.monotonic() - t0, 1e-9))
                if _checkpoint_due(config, last_save):
                    save_checkpoint(out, model, optimizer, position)
                    last_save = time.monotonic()
            n_run = max(1, steps_per_epoch - first_step)  # a resumed epoch averages the steps run since
            row = {**({"stage": stage.name} if stage.keeps else {}), "epoch": epoch + 1,
                   **{k: round(v / n_run, 6) for k, v in sums.items()},
                   "lr": [g["lr"] for g in optimizer.param_groups][0], "seconds": round(time.monotonic() - epoch_start, 2)}
            position["history"].append(row)
            position.update(epoch=epoch + 1, step_in_epoch=0)
            _write_history(out, position["history"])
            save_checkpoint(out, model, optimizer, position)
            last_save = time.monotonic()
    model.requires_grad_(True)
    return position


def _checkpoint_due(config, last_save: float) -> bool:
    minutes = config.train.checkpoint_minutes
    return minutes > 0 and time.monotonic() - last_save > 60 * minutes


def _write_history(out: Path, stage_rows: list[dict]) -> None:
    """results.csv: the rows of earlier stages (kept in the file) followed by this stage's rows."""
    stage = stage_rows[0].get("stage") if stage_rows else None
    earlier = []
    if stage is not None and (out / "results.csv").is_file():
        with open(out / "results.csv", newline="") as f:
            earlier = [r for r in csv.DictReader(f) if r.get("stage") != stage]
    atomic_write_text(out / "results.csv", _history_csv(earlier + stage_rows))


def train(prepared: str | Path, out: str | Path, recipe: LoadedRecipe | None = None, resume: bool = False,
          device: str = "auto", console: Console | None = None, stages_from: str | Path | None = None) -> Path:
    """Train the recipe's method on the `train` split of a prepared dataset; write a bundle to `out`.

    stages_from: a run of a multi-stage method whose kept stage outputs are copied where this recipe
    and data would reproduce them (e.g. an ablation that changes only the last stage).
    """
    console = console or Console(stderr=True)
    out = Path(out)
    dev = resolve_device(device)
    _check_out(out, resume)
    samples = [s for s in load_manifest(prepared) if s.split == "train"]  # never calib, never test
    if not samples:
        raise DataError(f"no training images in {prepared}")
    config, profile = _run_config(out, recipe, resume)
    spec = get_method(config.method)
    categories = sorted({s.category for s in samples})
    size = config.data.image_size
    # Cheap checks that can fail (texture folder, pretrained weights) come before the long image load.
    needs_synth = getattr(spec.method_cls, "needs_synthetic_anomalies", False)
    synth = config.synth if (needs_synth(config) if callable(needs_synth) else needs_synth) else None
    textures = load_textures(config.synth.texture_dir, size) if synth is not None else []
    with seeded(config.seed):
        model = spec.method_cls(config, categories)
    model.to(dev).train()
    stages = model.training_stages() if hasattr(model, "training_stages") else None
    if stages_from is not None and not stages:
        raise BundleError(f"--stages-from: {config.method} trains in one stage; there is nothing to reuse")
    if stages_from is not None and not (Path(stages_from) / STAGES).is_dir():
        raise BundleError(f"--stages-from {stages_from}: no {STAGES}/ folder there (only multi-stage runs keep stage outputs)")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("loading images", total=len(samples))
        data = TrainImages(samples, categories, size, progress=lambda: bar.advance(task))
    if not resume:
        _start_run(out, recipe)
    extra = {}
    if hasattr(model, "fit"):
        position = _fit(model, data, dev, console)
    else:
        stages = stages or [_single_stage(model, config, synth)]
        fingerprints = _fingerprints(stages, config, samples)
        if stages_from is not None:
            _copy_stages(Path(stages_from), out, stages, fingerprints, console)
        position = _run_stages(model, config, data, textures, synth, stages, fingerprints, out, dev, console)
        if any(stage.keeps for stage in stages):
            extra = {"stage_seconds": {k: round(v, 1) for k, v in position["stage_seconds"].items()}}

    counts: dict[str, int] = {}
    for s in samples:
        counts[s.category] = counts.get(s.category, 0) + 1
    meta = {"categories": categories, "profile": profile, "train_seconds": round(position["seconds"], 1), **extra,
            "train_images": counts, "epochs": getattr(getattr(config, "train", None), "epochs", 0), "device": str(dev), "torch": torch.__version__,
            "python": platform.python_version(), "prepared": str(Path(prepared).resolve()),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    model.eval()
    write_bundle(out, model, config, meta)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    reused = position.get("reused")
    note = f"; stages {', '.join(reused)} finished earlier" if reused else ""
    console.print(f"model written to {out} ({position['seconds'] / 60:.1f} min of training{note})")
    return out
