"""The run folder: every path of a run and every read and write of it, in one place. No pickle.

    RUN/recipe.yaml                 the fully resolved recipe (written first)
    RUN/run.json                    the recipe file, profile and micro-batches the run started from
    RUN/results.csv                 loss per epoch (per stage and epoch for multi-stage methods)
    RUN/train.log                   what training said, time-stamped, with progress lines (appended on --resume)
    RUN/checkpoint/last.safetensors resumable training state: weights, optimizer, position
    RUN/checkpoint/...              stage scratch (reflow pairs); removed when training ends
    RUN/stages/NAME.safetensors     weights a finished stage trained, with its fingerprint
    RUN/model.safetensors           the trained weights
    RUN/meta.json                   format version, method, categories, image size, seed, training
                                    summary (written last: its presence marks a finished model)
    RUN/calibration.json            per-category thresholds (adcli calibrate; previous one kept as
                                    calibration.prev.json), with its outputs cache in .calibration-cache/
    RUN/routing-HASH.safetensors    the category router for --category auto (adcli/model/routing.py), named by
                                    the first 16 hex of its SHA-256, which calibration.json records
                                    (older calibrations: RUN/routing.safetensors)
    RUN/pretrained/PART/            a packed copy of a frozen pretrained part (`adcli weights pack`)

Frozen pretrained weights (Stable Diffusion's in DiAD) are not stored in model.safetensors: meta.json
names each part's source and its weights file's SHA-256, and loading finds the files again (a packed
copy first, then the method's search: the recipe's folder, $ADCLI_WEIGHTS_DIR, the Hugging Face cache)
and refuses any other content. Checkpoints and stage outputs leave them out too.

A run's identity (`model_id`) is the SHA-256 prefix of its weights, its recipe and the SHA-256 of the
pretrained files it references (packing does not change it): inference and
scoring settings change the scores of the same weights, so inspect's "already inspected" check and
report's output cache must not mistake one model for another. meta.json is not hashed (its training
summary is not part of the model), so the fields of it that change scores (`SCORING_META`) are also
stored in model.safetensors' metadata, and a meta.json that disagrees with them is refused.

A calibration is replaced as one unit: the router is written under a name of its own content, then
calibration.json (naming it) is replaced atomically, the single commit point; a kill at any moment
leaves the old calibration with its own router or the new one with its own.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from adcli import __version__
from adcli.core.errors import AdcliError, BundleError
from adcli.core.io import atomic_write_json, atomic_write_text, load_tensors, save_tensors, sha256_file
from adcli.core.device import place

if TYPE_CHECKING:
    from adcli.model.methods.base import Method

FORMAT = "adcli-bundle"
FORMAT_VERSION = 1
# meta.json fields that change scores: the input size, and the categories whose order gives the ids
# the weights were trained with. Stored in model.safetensors' metadata too (covered by model_id).
SCORING_META = ("image_size", "categories")
SCORING_META_KEY = "adcli.scoring_meta"
# A calibration.json is refused unread above this: one measured from a test run holds ~1.4 KB per
# category with 24 normals (each normal's score is ~25 bytes), so 64 MiB is over two million normal
# scores; a padded file (a million copies of a category: 2.8 GB) would otherwise cost gigabytes and
# minutes on every load.
CALIBRATION_MAX_BYTES = 64 << 20


def file_metadata(path: Path) -> dict:
    """A safetensors file's string metadata, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise BundleError(f"cannot read {path}: {exc}") from None


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


def _trained_state(model: Method) -> dict[str, torch.Tensor]:
    """The state dict without frozen pretrained parts (a bundle references those files instead)."""
    frozen = {k for part in model.frozen_pretrained() for k in part.keys}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def _load_trained_state(model: Method, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a `_trained_state`: the missing keys must be exactly frozen pretrained ones."""
    frozen = {k for part in model.frozen_pretrained() for k in part.keys}
    result = model.load_state_dict(state, strict=False)
    wrong = [k for k in result.missing_keys if k not in frozen] + list(result.unexpected_keys)
    if wrong:
        raise BundleError(f"{source} does not match the model: {', '.join(wrong[:3])}")


class RunFolder:
    WEIGHTS = "model.safetensors"
    RECIPE = "recipe.yaml"
    META = "meta.json"
    RUN_INFO = "run.json"
    HISTORY = "results.csv"
    CHECKPOINT = Path("checkpoint") / "last.safetensors"
    STAGES = "stages"
    CALIBRATION = "calibration.json"
    CALIBRATION_BACKUP = "calibration.prev.json"
    CALIBRATION_CACHE = ".calibration-cache"
    ROUTING = "routing.safetensors"
    LOG = "train.log"
    PRETRAINED = "pretrained"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # ---- state ---------------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return (self.path / self.META).is_file()

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def scratch(self) -> Path:
        """Where stages keep data that must survive a resume (removed when training ends)."""
        return self.checkpoint_path.parent

    @property
    def is_started(self) -> bool:
        return (self.path / self.RECIPE).is_file()

    def check_new(self) -> None:
        """Refuse to write into a folder that already holds something."""
        if self.path.exists() and not self.path.is_dir():
            raise BundleError(f"--out {self.path} is a file; choose a folder")
        if self.path.exists() and any(self.path.iterdir()):
            if self.is_finished:
                what = "already holds a finished model"
            elif self.is_started:
                what = "already holds an unfinished run (continue it with --resume)"
            else:
                what = f"is not empty (it holds {next(self.path.iterdir()).name}, ...) and is not an adcli run"
            raise BundleError(f"{self.path} {what}; choose another --out")

    def check_resumable(self) -> None:
        """A run can resume from its checkpoint, its kept stages, or (killed before either) its recipe."""
        if self.is_finished:
            raise BundleError(f"{self.path} holds a finished model; nothing to resume")
        if not self.is_started:
            raise BundleError(f"nothing to resume in {self.path}: no {self.RECIPE} (it is not an adcli run)")

    # ---- recipe ----------------------------------------------------------------------------------
    def start(self, config: Any, recipe_file: Path, profile: str | None, micro_batches: int = 1) -> None:
        """The run's first files; written only once everything that can fail early has passed.
        micro_batches: how each global batch is cut (processes × accumulate), which a resume keeps."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_recipe(config)
        atomic_write_json(self.path / self.RUN_INFO, {"recipe_file": str(recipe_file), "profile": profile,
                                                      "micro_batches": micro_batches})

    def write_recipe(self, config: Any) -> None:
        from adcli.model.recipe import to_dict

        atomic_write_text(self.path / self.RECIPE, yaml.safe_dump(to_dict(config), sort_keys=False))

    def read_config(self) -> Any:
        from adcli.model.recipe import config_from_dict, read_yaml

        path = self.path / self.RECIPE
        if not path.is_file():
            raise BundleError(f"{self.path} is not an adcli run folder (no {self.RECIPE})")
        return config_from_dict(read_yaml(path), str(path))

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
        tensors = {f"model.{k}": v for k, v in _trained_state(model).items()}
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
        _load_trained_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, self.checkpoint_path)
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
        kept = {k: v for k, v in _trained_state(model).items() if k.startswith(keeps)}
        save_tensors(self.stage_file(name), kept, metadata={"fingerprint": fingerprint, "seconds": str(round(seconds, 1))})

    def load_stage(self, model: Method, name: str) -> None:
        model.load_state_dict(load_tensors(self.stage_file(name)), strict=False)

    def copy_stage_from(self, source: RunFolder, name: str) -> None:
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

    # ---- the finished model ----------------------------------------------------------------------------
    def write_model(self, model: Method, config: Any, meta: dict) -> None:

        references = [{"part": p.part, "source": p.source, "files": list(p.files), "keys": len(p.keys),
                       "sha256": sha256_file(p.folder / p.files[0])} for p in model.frozen_pretrained()]
        training_only = model.training_only()
        state = {k: v for k, v in _trained_state(model).items() if not (training_only and k.startswith(training_only))}
        full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "adcli_version": __version__,
                     "method": config.method, "image_size": config.data.image_size, "seed": config.seed, **meta,
                     **({"pretrained": references} if references else {})}
        # One metadata key: safetensors writes several in a random order, and these bytes are the model id.
        save_tensors(self.path / self.WEIGHTS, state,
                     {SCORING_META_KEY: json.dumps({k: full_meta[k] for k in SCORING_META}, sort_keys=True)})
        self.write_recipe(config)
        atomic_write_json(self.path / self.META, full_meta)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def read_meta(self) -> dict:
        path = self.path / self.META
        if not self.path.is_dir():
            raise BundleError(f"model folder not found: {self.path}")
        if not path.is_file():
            hint = " (training not finished: `adcli train --resume`)" if self.scratch.is_dir() else ""
            raise BundleError(f"{self.path} is not a finished adcli model: {self.META} missing{hint}")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise BundleError(f"{path}: not an adcli bundle")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(f"{self.path}: bundle format v{version} is newer than this adcli ({__version__}) reads "
                              f"(v{FORMAT_VERSION}); upgrade adcli")
        categories, size = meta.get("categories"), meta.get("image_size")
        if not isinstance(categories, list) or not categories or not all(isinstance(c, str) and c for c in categories):
            raise BundleError(f"{path}: 'categories' must be a list of category names; the file is damaged, train again")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or not isinstance(meta.get("method"), str):
            raise BundleError(f"{path}: 'image_size' and 'method' are missing or wrong; the file is damaged, train again")
        references = meta.get("pretrained", [])
        if not isinstance(references, list) or not all(
                isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("part", "source", "sha256"))
                and isinstance(r.get("files"), list) and r["files"] and all(isinstance(f, str) and f and "/" not in f
                                                                            and "\\" not in f and f != ".." for f in r["files"])
                for r in references):
            raise BundleError(f"{path}: 'pretrained' is damaged (each entry needs part, source, files, sha256); train again")
        self._check_scoring_meta(meta)
        return meta

    def _check_scoring_meta(self, meta: dict) -> None:
        """meta.json's score-changing fields must be those the weights were trained with: model_id does
        not hash meta.json, so an edited image size would change every verdict under the same id."""
        try:
            stored = file_metadata(self.path / self.WEIGHTS)
        except (BundleError, OSError):
            return  # missing or damaged weights: loading them says so, in its own words
        if SCORING_META_KEY in stored:
            trained = json.loads(stored[SCORING_META_KEY])
        else:  # bundles written before: the recipe (hashed into model_id) still knows the image size
            trained = {"image_size": self.read_config().data.image_size}
        for key, value in trained.items():
            if meta.get(key) != value:
                raise BundleError(f"{self.path / self.META}: '{key}' is {json.dumps(meta.get(key))} but the model was "
                                  f"trained with {json.dumps(value)}; the bundle was edited: restore {self.META} or train again")

    def load_model(self, device: torch.device | str = "cpu"):
        """-> (model in eval mode on `device`, meta dict). No pickle, no network."""
        from adcli.model.registry import get_method

        meta = self.read_meta()
        config = self.read_config()
        spec = get_method(config.method, source=str(self.path / self.RECIPE))
        model = spec.method_cls(config, meta["categories"], load_pretrained=False)  # the bundle supplies every weight
        state = load_tensors(self.path / self.WEIGHTS)
        for reference in meta.get("pretrained", []):
            folder = self.pretrained_folder(model, reference)
            for key, value in model.pretrained_state(reference["part"], folder).items():
                state.setdefault(key, value)  # what training changed is in model.safetensors
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(f"{self.path / self.WEIGHTS} does not match its recipe: {first}") from None
        return place(model, device).eval(), meta

    def model_id(self) -> str:
        digest = hashlib.sha256()
        for name in (self.WEIGHTS, self.RECIPE):
            with open(self.path / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        for reference in self.read_meta().get("pretrained", []):
            digest.update(reference["sha256"].encode())
        return digest.hexdigest()[:12]

    # ---- referenced pretrained parts -----------------------------------------------------------------
    def packed_folder(self, part: str) -> Path:
        return self.path / self.PRETRAINED / part

    def pretrained_folder(self, method, reference: dict, *, packed: bool = True) -> Path:
        """The folder holding a referenced part's files with the recorded SHA-256: the packed copy, else
        the search of `method` (class or instance) from the recipe's source. Anything else is refused."""

        copy = self.packed_folder(reference["part"])
        if packed and (copy / reference["files"][0]).is_file():
            folder = copy
        else:
            try:
                folder = method.find_pretrained(reference["part"], reference["source"])
            except AdcliError as exc:
                raise BundleError(f"{self.path} references pretrained {reference['part']} weights it does not hold "
                                  f"(SHA-256 {reference['sha256'][:16]}…): {exc}") from None
        weights = folder / reference["files"][0]
        if not weights.is_file() or sha256_file(weights) != reference["sha256"]:
            raise BundleError(f"{weights} is not the {reference['part']} weights {self.path} was trained with (SHA-256 "
                              f"{reference['sha256'][:16]}…); put those files back, or use a packed bundle (adcli weights pack)")
        return folder

    def pack(self) -> list[Path]:
        """Copy every referenced pretrained part into RUN/pretrained/PART/ (atomically, checked), so the
        bundle needs nothing outside it. Scores and model_id do not change. -> the folders written."""
        from adcli.model.registry import get_method

        references = self.read_meta().get("pretrained", [])
        if not references:
            return []
        method = get_method(self.read_config().method).method_cls
        written = []
        for reference in references:
            target = self.packed_folder(reference["part"])
            if (target / reference["files"][0]).is_file():
                self.pretrained_folder(method, reference)  # an existing copy must still be the right one
                continue
            source = self.pretrained_folder(method, reference, packed=False)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name in reference["files"]:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
            shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (its weights file removed)
            tmp.replace(target)
            self.pretrained_folder(method, reference)  # the copy is checked like any other source
            written.append(target)
        return written

    # ---- calibration -------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    @property
    def calibration_cache(self) -> Path:
        return self.path / self.CALIBRATION_CACHE

    def read_calibration(self):
        """-> Calibration or None when the model is not calibrated (checked as a file, not against the
        model: `load_calibration` does that)."""
        from adcli.bundle.calibration import Calibration

        path = self.path / self.CALIBRATION
        if not path.is_file():
            return None
        size = path.stat().st_size
        if size > CALIBRATION_MAX_BYTES:
            raise BundleError(f"{path} is {size / 1e6:.1f} MB, more than any calibration holds "
                              f"({CALIBRATION_MAX_BYTES / 1e6:.0f} MB); run `adcli calibrate {self.path}` again")
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: unreadable ({exc}); run `adcli calibrate {self.path}` again") from None
        return Calibration.from_dict(tree, str(path))

    def load_calibration(self, model_id: str, categories: list[str]):
        """-> (Calibration, CategoryRouter or None), or (None, None) when the model is not calibrated.
        The calibration must be this model's, hold only its categories and name a router that is there;
        anything else is a one-line BundleError (which `adcli calibrate` writes a new one over)."""
        calibration = self.read_calibration()
        if calibration is None:
            return None, None
        path = self.path / self.CALIBRATION
        if calibration.model_id != model_id:
            raise BundleError(f"{path} was made for another model ({calibration.model_id}; this one is {model_id}); "
                              f"run `adcli calibrate {self.path}` again")
        unknown = next((c for c in calibration.categories if c not in categories), None)
        if unknown is not None:
            raise BundleError(f"{path} holds category '{unknown}', which is not one of the model's "
                              f"({', '.join(categories)}); run `adcli calibrate {self.path}` again")
        return calibration, self.read_router(calibration)

    def router_path(self, sha256: str) -> Path:
        """Where the router with this SHA-256 is: routing-<16 hex>.safetensors, or for a calibration
        written before content-addressed names, routing.safetensors (`read_router` checks the hash)."""
        named = self.path / f"routing-{sha256[:16]}.safetensors"
        legacy = self.path / self.ROUTING
        return legacy if not named.is_file() and legacy.is_file() else named

    def calibration_files(self) -> list[Path]:
        """The files a Detector reads for its calibration: calibration.json and the router it names
        (routing.safetensors when it names none or cannot be read: the list always has two paths; they
        may not exist). A recalibration replaces calibration.json (a new inode) and names a new router."""
        sha = _named_router(self.path / self.CALIBRATION)
        return [self.path / self.CALIBRATION, self.router_path(sha) if sha else self.path / self.ROUTING]

    def read_router(self, calibration):
        """-> the CategoryRouter the calibration was made with, or None when it has none."""
        from adcli.model.routing import CategoryRouter

        if calibration is None or not calibration.routing:
            return None
        path = self.router_path(calibration.routing)
        if not path.is_file() or sha256_file(path) != calibration.routing:
            raise BundleError(f"{path} is missing or does not belong to {self.path / self.CALIBRATION}; "
                              f"run `adcli calibrate {self.path}` again")
        return CategoryRouter.load(path)

    def write_router(self, router) -> str:
        """Write a router under its content's name; -> its SHA-256, for the calibration that will name it.
        Until that calibration is written, the current one and its router stay as they are."""
        staging = self.path / ".routing-new.safetensors"
        router.save(staging)
        sha = sha256_file(staging)
        os.replace(staging, self.path / f"routing-{sha[:16]}.safetensors")
        return sha

    def write_calibration(self, calibration) -> None:
        """Atomically (the commit point of a recalibration), keeping the previous calibration as
        calibration.prev.json; then remove the routers neither of them names."""
        current = self.path / self.CALIBRATION
        if current.is_file():
            backup = self.path / self.CALIBRATION_BACKUP
            tmp = backup.with_name(f".{backup.name}.tmp")
            shutil.copy2(current, tmp)  # a copy, not a read: a damaged file may be huge
            os.replace(tmp, backup)
        atomic_write_json(current, dataclasses.asdict(calibration))
        self._remove_unnamed_routers()

    def _remove_unnamed_routers(self) -> None:
        """Routers that neither calibration.json nor calibration.prev.json names (the backup keeps its
        router, so copying it back restores a working calibration), and a killed write's staging file."""
        named = {_named_router(self.path / name) for name in (self.CALIBRATION, self.CALIBRATION_BACKUP)} - {""}
        for path in self.path.glob("routing-*.safetensors"):
            if not any(path.name == f"routing-{sha[:16]}.safetensors" for sha in named):
                path.unlink(missing_ok=True)
        legacy = self.path / self.ROUTING
        if legacy.is_file() and sha256_file(legacy) not in named:
            legacy.unlink(missing_ok=True)
        (self.path / ".routing-new.safetensors").unlink(missing_ok=True)


def _named_router(calibration_file: Path) -> str:
    """The router SHA-256 a calibration file names; "" for none, or for a missing or unreadable file."""
    try:
        if calibration_file.stat().st_size > CALIBRATION_MAX_BYTES:
            return ""
        routing = json.loads(calibration_file.read_text(encoding="utf-8")).get("routing", "")
    except (OSError, ValueError, AttributeError):  # missing, not JSON, or not an object
        return ""
    return routing if isinstance(routing, str) else ""
