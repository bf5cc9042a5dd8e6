"""A method's stages, run in order: kept outputs reused, fingerprints that say when they may be.

A stage that `keeps` weights saves them in RUN/stages/ with a fingerprint (seed, data, settings so far),
so a rerun or another run (`--stages-from`) reuses what it would reproduce. A `FitStage` sees every
training image once; a `GradientStage` runs the optimizer loop (adcli/commands/train/loop.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import torch

from adcli.bundle.training_state import TrainingRun
from adcli.commands.train.loop import amp_dtype, train_stage
from adcli.commands.train.output import TrainOutput
from adcli.core.config import SynthConfig
from adcli.core.distributed import Ranks
from adcli.core.errors import AdcliError
from adcli.data.batches import Synthesizer, TrainImages
from adcli.model.methods.base import FitStage, Stage, StageContext


def micro_batch_count(config, ranks: Ranks, run: TrainingRun, resume: bool) -> int:
    """Micro-batches per global batch: processes × accumulate, or what the resumed run started with, so
    a run started on N processes continues the same on any M that divides its count."""
    engine = config.engine
    if not resume:
        return ranks.world * engine.accumulate
    count = run.micro_batches(engine.accumulate)
    if count % ranks.world:
        fits = ", ".join(str(m) for m in range(1, count + 1) if count % m == 0)
        raise AdcliError(f"{run} cuts each batch into {count} micro-batches (processes × engine.accumulate when it "
                         f"started); resume it on {fits} process(es), not {ranks.world}")
    return count


def fingerprints(stages: list[Stage], config, samples: list, micro_count: int = 1,
                  dev: torch.device = torch.device("cpu")) -> list[str]:
    """Stage i's fingerprint covers the data, the seed and every setting of stages 0..i, so a kept stage
    output is reused only where it would come out the same (the engine's settings only where they
    differ from a plain single-process fp32 run, so such runs keep their fingerprints)."""
    base = {"seed": config.seed, "data": dataclasses.asdict(config.data),
            "train_images": sorted((s.category, s.path) for s in samples)}
    engine = config.engine
    loop = {"micro_batches": micro_count, "ema_decay": engine.ema_decay,
            "amp": str(amp_dtype(engine, dev)), "clip_grad_norm": engine.clip_grad_norm}
    if loop != {"micro_batches": 1, "ema_decay": None, "amp": "None", "clip_grad_norm": None}:
        base["loop"] = loop
    digest = hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()
    out = []
    for stage in stages:
        text = json.dumps({"previous": digest, "name": stage.name, "settings": stage.settings}, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        out.append(digest)
    return out


def copy_stages(source: TrainingRun, run: TrainingRun, stages: list[Stage], fingerprints: list[str], out: TrainOutput) -> None:
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


def synthesizer_for(synth: SynthConfig | None, data: TrainImages, textures: list, out: TrainOutput) -> Synthesizer | None:
    if synth is None:
        return None
    objects = Synthesizer.object_categories(synth, data)
    source = synth.texture_dir or f"{len(textures)} textures made in code"
    out.say(f"synthetic anomalies: textures from {source}; on the object only: {', '.join(sorted(objects)) or 'none'}")
    return Synthesizer(synth, textures, {data.categories.index(c) for c in objects if c in data.categories})


def run_stages(model, config, data: TrainImages, synthesizer: Synthesizer | None, stages: list[Stage],
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
            position = train_stage(model, config, index, stage, stage_data, synthesizer if stage.synth else None,
                                    run, resume_here, ctx, out, micro_count)
            stage_seconds[stage.name] = position["seconds"] + data_seconds
        if stage.keeps and ctx.ranks.is_main:
            run.save_stage(model, stage.name, stage.keeps, fingerprint, stage_seconds[stage.name])
    return {"seconds": sum(stage_seconds.values()), "stage_seconds": stage_seconds, "reused": reused}
