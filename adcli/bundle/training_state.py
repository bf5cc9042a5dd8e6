"""The training state of a run folder: what `adcli train` writes while it works, to resume exactly.

    RUN/run.json                    the recipe file, profile and micro-batches the run started from
    RUN/results.csv                 loss per epoch (per stage and epoch for multi-stage methods)
    RUN/train.log                   what training said, time-stamped, with progress lines (appended on --resume)
    RUN/checkpoint/last.safetensors resumable training state: weights, optimizer, position
    RUN/checkpoint/...              stage scratch (reflow pairs); removed when training ends
    RUN/stages/NAME.safetensors     weights a finished stage trained, with its fingerprint

The finished model in the same folder (weights, recipe, meta) is the Bundle (adcli/bundle/model_bundle.py):
training starts by writing the bundle's recipe and ends by writing the rest of it. No pickle: the optimizer
state is flattened into tensors plus JSON.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adcli.bundle.model_bundle import Bundle, file_metadata, load_trained_state, trained_state
from adcli.core.errors import BundleError
from adcli.core.io import atomic_write_json, atomic_write_text, load_tensors, save_tensors

if TYPE_CHECKING:
    from adcli.model.methods.base import Method


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


def _history_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))  # stages log different losses
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class TrainingRun:
    RUN_INFO = "run.json"
    HISTORY = "results.csv"
    CHECKPOINT = Path("checkpoint") / "last.safetensors"
    STAGES = "stages"
    LOG = "train.log"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.bundle = Bundle(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ---- state ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def scratch(self) -> Path:
        """Where stages keep data that must survive a resume (removed when training ends)."""
        return self.checkpoint_path.parent

    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    def check_new(self) -> None:
        """Refuse to write into a folder that already holds something."""
        if self.path.exists() and not self.path.is_dir():
            raise BundleError(f"--out {self.path} is a file; choose a folder")
        if self.path.exists() and any(self.path.iterdir()):
            if self.bundle.is_finished:
                what = "already holds a finished model"
            elif self.bundle.is_started:
                what = "already holds an unfinished run (continue it with --resume)"
            else:
                what = f"is not empty (it holds {next(self.path.iterdir()).name}, ...) and is not an adcli run"
            raise BundleError(f"{self.path} {what}; choose another --out")

    def check_resumable(self) -> None:
        """A run can resume from its checkpoint, its kept stages, or (killed before either) its recipe."""
        if self.bundle.is_finished:
            raise BundleError(f"{self.path} holds a finished model; nothing to resume")
        if not self.bundle.is_started:
            raise BundleError(f"nothing to resume in {self.path}: no {Bundle.RECIPE} (it is not an adcli run)")

    def start(self, config: Any, recipe_file: Path, profile: str | None, micro_batches: int = 1) -> None:
        """The run's first files; written only once everything that can fail early has passed.
        micro_batches: how each global batch is cut (processes × accumulate), which a resume keeps."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.bundle.write_recipe(config)
        atomic_write_json(self.path / self.RUN_INFO, {"recipe_file": str(recipe_file), "profile": profile,
                                                      "micro_batches": micro_batches})

    def _run_info(self) -> dict:
        path = self.path / self.RUN_INFO
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def profile(self) -> str | None:
        return self._run_info().get("profile")

    def micro_batches(self, accumulate: int) -> int:
        """The micro-batches per global batch the run started with (runs before 0.2: `accumulate`)."""
        return int(self._run_info().get("micro_batches", accumulate))

    # ---- checkpoint --------------------------------------------------------------------------------
    def save_checkpoint(self, model: Method, optimizer: torch.optim.Optimizer, position: dict,
                        extra_tensors: dict[str, torch.Tensor] | None = None, extra: dict | None = None) -> None:
        """extra_tensors: the loop's own state (EMA weights, stored as `extra.NAME`); extra: JSON-able
        state (the gradient scaler's)."""
        tensors = {f"model.{k}": v for k, v in trained_state(model).items()}
        optim_tensors, rest = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
        tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
        # Position and optimizer settings live in the same file's metadata, so they can never disagree.
        save_tensors(self.checkpoint_path, tensors, metadata={"position": json.dumps(position), "optimizer": json.dumps(rest),
                                                              "extra": json.dumps(extra or {})})

    def checkpoint_extras(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The loop state save_checkpoint was given: (extra_tensors, extra); empty for older checkpoints."""
        tensors = load_tensors(self.checkpoint_path)
        meta = file_metadata(self.checkpoint_path)
        return {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}, json.loads(meta.get("extra", "{}"))

    def checkpoint_position(self) -> dict | None:
        if not self.checkpoint_path.is_file():
            return None
        return json.loads(file_metadata(self.checkpoint_path)["position"])

    def load_checkpoint(self, model: Method, optimizer: torch.optim.Optimizer) -> dict:
        tensors = load_tensors(self.checkpoint_path)
        meta = file_metadata(self.checkpoint_path)
        load_trained_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, self.checkpoint_path)
        _restore_optimizer(optimizer, tensors, json.loads(meta["optimizer"]))
        return json.loads(meta["position"])

    # ---- stage outputs -----------------------------------------------------------------------------
    def stage_file(self, name: str) -> Path:
        return self.path / self.STAGES / f"{name}.safetensors"

    @property
    def has_stages(self) -> bool:
        return (self.path / self.STAGES).is_dir()

    def finished_stage(self, name: str, fingerprint: str) -> dict | None:
        """The metadata of a kept stage output with this fingerprint, else None."""
        path = self.stage_file(name)
        if not path.is_file():
            return None
        meta = file_metadata(path)
        return meta if meta.get("fingerprint") == fingerprint else None

    def save_stage(self, model: Method, name: str, keeps: tuple[str, ...], fingerprint: str, seconds: float) -> None:
        kept = {k: v for k, v in trained_state(model).items() if k.startswith(keeps)}
        save_tensors(self.stage_file(name), kept, metadata={"fingerprint": fingerprint, "seconds": str(round(seconds, 1))})

    def load_stage(self, model: Method, name: str) -> None:
        model.load_state_dict(load_tensors(self.stage_file(name)), strict=False)

    def copy_stage_from(self, source: TrainingRun, name: str) -> None:
        target = self.stage_file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(source.stage_file(name), tmp)
        tmp.replace(target)

    # ---- history -----------------------------------------------------------------------------------
    def write_history(self, stage_rows: list[dict]) -> None:
        """results.csv: the rows of earlier stages (kept in the file) followed by this stage's rows."""
        path = self.path / self.HISTORY
        stage = stage_rows[0].get("stage") if stage_rows else None
        earlier = []
        if stage is not None and path.is_file():
            with open(path, newline="") as f:
                earlier = [r for r in csv.DictReader(f) if r.get("stage") != stage]
        atomic_write_text(path, _history_csv(earlier + stage_rows))

    # ---- the end -----------------------------------------------------------------------------------
    def finish(self, model: Method, config: Any, meta: dict) -> None:
        """Write the finished bundle, then drop the scratch a resume would have needed."""
        self.bundle.write_model(model, config, meta)
        shutil.rmtree(self.scratch, ignore_errors=True)
