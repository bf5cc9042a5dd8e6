"""A cheap probe of how a method learns to find synthetic anomalies, for choosing training settings.

It trains a method's gradient stage with that stage's own losses and optimizer groups (as `adcli
train` does, without a run folder) for a few hundred steps and, every `every` steps, scores one fixed
held-out set: held-out normal images (the prepared calib split) and copies of them with a synthetic
anomaly from the run's synthesizer, drawn once from a fixed seed. Each point reports the mean map value
inside and outside the anomaly masks, pixel AUROC over the anomalous copies, and image AUROC (normal
images vs anomalous copies). Real defects are not synthetic ones: the probe ranks settings cheaply;
`adcli report` on real test images decides.

    python examples/probe_diffusionad.py PREPARED --steps 300 --set train.t_s_range=[150,250]
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from adcli.data.batches import Synthesizer, TrainImages, to_tensor
from adcli.data.manifest import load_manifest
from adcli.core.errors import DataError
from adcli.model.methods.base import GradientStage
from adcli.model.recipe import LoadedRecipe
from adcli.model.registry import build_method
from adcli.core.device import place, seeded


@dataclasses.dataclass
class ProbePoint:
    step: int
    loss: float  # mean training loss since the previous point
    inside: float  # mean map value inside the masks
    outside: float  # ... and outside them
    pixel_auroc: float
    image_auroc: float
    seconds: float  # training time so far


@dataclasses.dataclass
class HeldOut:
    normals: torch.Tensor  # (N, 3, H, W) in [0, 1]
    anomalous: torch.Tensor  # (N, 3, H, W): the same images with a synthetic anomaly
    masks: np.ndarray  # (N, H, W) bool, never empty
    category_ids: torch.Tensor  # (N,)


def held_out_set(images: TrainImages, synthesizer: Synthesizer, count: int, seed: int) -> HeldOut:
    """Up to `count` evenly spaced images of `images`, each with one non-empty synthetic anomaly."""
    rng = np.random.default_rng([seed, 7])
    picked = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    normals, anomalous, masks, ids = [], [], [], []
    for i in picked:
        image = images.images[i].astype(np.float32) / 255.0
        for _ in range(20):  # a mask that missed the object teaches nothing: draw again
            out, mask = synthesizer(image, int(images.category_ids[i]), rng)
            if mask.any():
                normals.append(images.images[i])
                anomalous.append(out)
                masks.append(mask > 0.5)
                ids.append(int(images.category_ids[i]))
                break
    if not normals:
        raise DataError("the probe could not place a synthetic anomaly on any held-out image")
    to_chw = lambda a: torch.from_numpy(np.stack(a).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    return HeldOut(to_tensor(np.stack(normals)), to_chw(anomalous), np.stack(masks), torch.tensor(ids))


@torch.no_grad()
def evaluate(model, held: HeldOut, batch_size: int, device: torch.device) -> dict[str, float]:
    """Inside/outside means, pixel AUROC and image AUROC of `model.predict` on the held-out set."""
    was_training = model.training
    model.eval()

    def run(images):
        maps, scores = [], []
        for i in range(0, len(images), batch_size):
            out = model.predict(images[i:i + batch_size].to(device), held.category_ids[i:i + batch_size].to(device))
            maps.append(out.anomaly_map.float().cpu())
            scores.append(out.score.float().cpu())
        return torch.cat(maps).numpy(), torch.cat(scores).numpy()

    maps, anomalous_scores = run(held.anomalous)
    _, normal_scores = run(held.normals)
    model.train(was_training)
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(anomalous_scores))]
    return {"inside": float(maps[held.masks].mean()), "outside": float(maps[~held.masks].mean()),
            "pixel_auroc": float(roc_auc_score(held.masks.ravel(), maps.ravel())),
            "image_auroc": float(roc_auc_score(labels, np.r_[normal_scores, anomalous_scores]))}


def probe(prepared: str | Path, recipe: LoadedRecipe, steps: int, every: int, eval_images: int = 32,
          device: str | torch.device = "cpu", report: Callable[[ProbePoint], None] = lambda point: None) -> list[ProbePoint]:
    """Train the recipe's first stage that uses synthetic anomalies for `steps` steps; a point every `every`."""
    if steps < 1 or every < 1:
        raise ValueError("steps and every must be >= 1")
    config, dev = recipe.config, torch.device(device)
    manifest = load_manifest(prepared)
    train_samples = [s for s in manifest if s.split == "train"]
    calib_samples = [s for s in manifest if s.split == "calib"]
    if not train_samples or not calib_samples:
        raise DataError(f"{prepared}: the probe needs a train and a calib split (adcli prepare makes both)")
    categories = sorted({s.category for s in train_samples})
    calib_samples = [s for s in calib_samples if s.category in categories]
    with seeded(config.seed):
        model = build_method(config, categories)
    place(model, dev).train()
    stage = next((s for s in model.stages() if isinstance(s, GradientStage) and s.synth is not None), None)
    if stage is None:
        raise DataError(f"{config.method} has no stage trained on synthetic anomalies: nothing to probe")
    size = config.data.image_size
    data = TrainImages(train_samples, categories, size)
    synthesizer = Synthesizer(stage.synth, Synthesizer.textures_for(stage.synth, size, config.seed),
                              {categories.index(c) for c in Synthesizer.object_categories(stage.synth, data) if c in categories})
    held = held_out_set(TrainImages(calib_samples, categories, size), synthesizer, eval_images, config.seed)

    batch_size = min(stage.batch_size, len(data))
    groups, lr_factors = stage.param_groups(steps)
    model.requires_grad_(False)
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    base_lrs = [g["lr"] for g in groups]
    optimizer = torch.optim.Adam(groups)
    steps_per_epoch = max(1, len(data) // batch_size)
    points, losses, trained_seconds = [], [], 0.0
    for step in range(steps):
        epoch, within = divmod(step, steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
        rng = np.random.default_rng([config.seed, epoch, within])
        start = time.monotonic()
        batch = data.batch(order[within * batch_size:(within + 1) * batch_size], rng, synthesizer)
        batch = type(batch)(**{k: v.to(dev) for k, v in vars(batch).items()})
        for g, base, factor in zip(optimizer.param_groups, base_lrs, lr_factors):
            g["lr"] = base * factor(step)
        loss = stage.losses(batch, torch.Generator(device=dev).manual_seed(int(rng.integers(2**62))))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trained_seconds += time.monotonic() - start
        losses.append(float(loss.detach()))
        if (step + 1) % every == 0 or step + 1 == steps:
            figures = evaluate(model, held, config.inference.batch_size, dev)
            points.append(ProbePoint(step + 1, float(np.mean(losses)), seconds=round(trained_seconds, 1), **figures))
            losses = []
            report(points[-1])
    return points
