"""The one training loop, shared by every method: explicit, resumable, deterministic.

Randomness: the epoch's order comes from (seed, epoch), each step's synthesis and noise from
(seed, epoch, step), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import csv
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
from adcli.registry import get_method
from adcli.runtime import resolve_device, seeded

CHECKPOINT = Path("checkpoint") / "last.safetensors"


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


def load_checkpoint(run: Path, model, optimizer) -> dict:
    from safetensors import safe_open

    path = run / CHECKPOINT
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _restore_optimizer(optimizer, tensors, json.loads(meta["optimizer"]))
    return json.loads(meta["position"])


def _history_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _check_out(out: Path, resume: bool) -> None:
    """Refuse to overwrite anything: a finished model, or an unfinished run without --resume."""
    if resume:
        if (out / META).is_file():
            raise BundleError(f"{out} holds a finished model; nothing to resume")
        if not (out / CHECKPOINT).is_file():
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
    return {"seconds": time.monotonic() - start, "history": []}


def _train_loop(model, config, data: TrainImages, textures: list, synth, out: Path, resume: bool,
                dev: torch.device, console: Console) -> dict:
    """The gradient loop: epochs of half-normal, half-synthetic batches, checkpoints, exact resume."""
    tc = config.train
    batch_size = min(tc.batch_size, len(data))
    steps_per_epoch = max(1, len(data) // batch_size)
    total_steps = steps_per_epoch * tc.epochs
    groups, lr_factors = model.param_groups(total_steps)
    base_lrs = [g["lr"] for g in groups]
    optimizer = torch.optim.Adam(groups)
    position = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0, "history": []}
    if resume:
        position = load_checkpoint(out, model, optimizer)
        console.print(f"resuming {out} at epoch {position['epoch'] + 1}, step {position['step_in_epoch']}")

    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"training {config.method} on {len(data)} images of {len(data.categories)} categories "
                  f"({', '.join(data.categories)}) at {config.data.image_size}px, {n_params / 1e6:.1f} M parameters, {tc.epochs} epochs, device {dev}")
    last_save = time.monotonic()
    start = time.monotonic() - position["seconds"]
    columns = (TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=total_steps, completed=position["global_step"], epoch=position["epoch"] + 1,
                            epochs=tc.epochs, loss=float("nan"), ips=0.0)
        while position["epoch"] < tc.epochs:
            epoch = position["epoch"]
            order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
            sums: dict[str, float] = {}
            epoch_start = time.monotonic()
            first_step = position["step_in_epoch"]
            for step in range(first_step, steps_per_epoch):
                t0 = time.monotonic()
                rng = np.random.default_rng([config.seed, epoch, step])
                gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))
                batch = data.batch(order[step * batch_size:(step + 1) * batch_size], rng, textures, synth)
                batch = type(batch)(**{k: v.to(dev) for k, v in vars(batch).items()})
                for g, base, factor in zip(optimizer.param_groups, base_lrs, lr_factors):
                    g["lr"] = base * factor(position["global_step"])
                losses = model.training_losses(batch, gen)
                if not torch.isfinite(losses["loss"]):  # before the step: the last checkpoint stays good
                    raise DataError(f"training diverged (loss {losses['loss'].item()}) at epoch {epoch + 1}; "
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
                if tc.checkpoint_minutes > 0 and time.monotonic() - last_save > 60 * tc.checkpoint_minutes:
                    save_checkpoint(out, model, optimizer, position)
                    last_save = time.monotonic()
            n_run = max(1, steps_per_epoch - first_step)  # a resumed epoch averages the steps run since
            row = {"epoch": epoch + 1, **{k: round(v / n_run, 6) for k, v in sums.items()},
                   "lr": [g["lr"] for g in optimizer.param_groups][0], "seconds": round(time.monotonic() - epoch_start, 2)}
            position["history"].append(row)
            position.update(epoch=epoch + 1, step_in_epoch=0)
            atomic_write_text(out / "results.csv", _history_csv(position["history"]))
            save_checkpoint(out, model, optimizer, position)
            last_save = time.monotonic()

    return position


def train(prepared: str | Path, out: str | Path, recipe: LoadedRecipe | None = None, resume: bool = False,
          device: str = "auto", console: Console | None = None) -> Path:
    """Train the recipe's method on the `train` split of a prepared dataset; write a bundle to `out`."""
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
    synth = config.synth if getattr(spec.method_cls, "needs_synthetic_anomalies", False) else None
    textures = load_textures(config.synth.texture_dir, size) if synth is not None else []
    with seeded(config.seed):
        model = spec.method_cls(config, categories)
    model.to(dev).train()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("loading images", total=len(samples))
        data = TrainImages(samples, categories, size, progress=lambda: bar.advance(task))
    if not resume:
        _start_run(out, recipe)
    if hasattr(model, "fit"):
        position = _fit(model, data, dev, console)
    else:
        position = _train_loop(model, config, data, textures, synth, out, resume, dev, console)

    counts: dict[str, int] = {}
    for s in samples:
        counts[s.category] = counts.get(s.category, 0) + 1
    meta = {"categories": categories, "profile": profile, "train_seconds": round(position["seconds"], 1),
            "train_images": counts, "epochs": getattr(getattr(config, "train", None), "epochs", 0), "device": str(dev), "torch": torch.__version__,
            "python": platform.python_version(), "prepared": str(Path(prepared).resolve()),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    model.eval()
    write_bundle(out, model, config, meta)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    console.print(f"model written to {out} ({position['seconds'] / 60:.1f} min)")
    return out
