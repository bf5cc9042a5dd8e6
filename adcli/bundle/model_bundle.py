"""The model bundle: what `adcli inspect` needs of a run folder, and every read and write of it. No pickle.

    RUN/model.safetensors   the trained weights
    RUN/recipe.yaml         the fully resolved recipe
    RUN/meta.json           format version, method, categories, image size, seed, training summary
                            (written last: its presence marks a finished model)
    RUN/pretrained/PART/    a packed copy of a frozen pretrained part (`adcli weights pack`)

Frozen pretrained weights (Stable Diffusion's in DiAD) are not stored in model.safetensors: meta.json
names each part's source and its weights file's SHA-256, and loading finds the files again (a packed
copy first, then the method's search: the recipe's folder, $ADCLI_WEIGHTS_DIR, the Hugging Face cache)
and refuses any other content.

A bundle's identity (`model_id`) is the SHA-256 prefix of its weights, its recipe and the SHA-256 of the
pretrained files it references (packing does not change it): inference and scoring settings change the
scores of the same weights, so inspect's "already inspected" check and report's output cache must not
mistake one model for another. meta.json is not hashed (its training summary is not part of the model),
so the fields of it that change scores (`SCORING_META`) are also stored in model.safetensors' metadata,
and a meta.json that disagrees with them is refused.

The training state next to it (checkpoints, stage outputs, history) is adcli/bundle/training_state.py;
the calibration, adcli/bundle/calibration_files.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from adcli import __version__
from adcli.core.device import place
from adcli.core.errors import AdcliError, BundleError
from adcli.core.io import atomic_write_json, atomic_write_text, load_tensors, save_tensors, sha256_file
from adcli.model.recipe import config_from_dict, read_yaml, to_dict
from adcli.model.registry import build_method, get_method

if TYPE_CHECKING:
    from adcli.model.methods.base import Method

FORMAT = "adcli-bundle"
FORMAT_VERSION = 1
# meta.json fields that change scores: the input size, and the categories whose order gives the ids
# the weights were trained with. Stored in model.safetensors' metadata too (covered by model_id).
SCORING_META = ("image_size", "categories")
SCORING_META_KEY = "adcli.scoring_meta"


def file_metadata(path: Path) -> dict:
    """A safetensors file's string metadata, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise BundleError(f"cannot read {path}: {exc}") from None


def trained_state(model: Method) -> dict[str, torch.Tensor]:
    """The state dict without frozen pretrained parts (a bundle references those files instead)."""
    frozen = {k for part in model.frozen_pretrained() for k in part.keys}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trained_state(model: Method, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a `trained_state`: the missing keys must be exactly frozen pretrained ones."""
    frozen = {k for part in model.frozen_pretrained() for k in part.keys}
    result = model.load_state_dict(state, strict=False)
    wrong = [k for k in result.missing_keys if k not in frozen] + list(result.unexpected_keys)
    if wrong:
        raise BundleError(f"{source} does not match the model: {', '.join(wrong[:3])}")


class Bundle:
    WEIGHTS = "model.safetensors"
    RECIPE = "recipe.yaml"
    META = "meta.json"
    PRETRAINED = "pretrained"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def is_finished(self) -> bool:
        return (self.path / self.META).is_file()

    @property
    def is_started(self) -> bool:
        return (self.path / self.RECIPE).is_file()

    # ---- recipe ----------------------------------------------------------------------------------
    def write_recipe(self, config: Any) -> None:
        atomic_write_text(self.path / self.RECIPE, yaml.safe_dump(to_dict(config), sort_keys=False))

    def read_config(self) -> Any:
        path = self.path / self.RECIPE
        if not path.is_file():
            raise BundleError(f"{self.path} is not an adcli run folder (no {self.RECIPE})")
        return config_from_dict(read_yaml(path), str(path))

    # ---- the finished model ----------------------------------------------------------------------------
    def write_model(self, model: Method, config: Any, meta: dict) -> None:
        """model.safetensors, then recipe.yaml, then meta.json: the last write marks a finished model."""
        references = [{"part": p.part, "source": p.source, "files": list(p.files), "keys": len(p.keys),
                       "sha256": sha256_file(p.folder / p.files[0])} for p in model.frozen_pretrained()]
        training_only = model.training_only()
        state = {k: v for k, v in trained_state(model).items() if not (training_only and k.startswith(training_only))}
        full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "adcli_version": __version__,
                     "method": config.method, "image_size": config.data.image_size, "seed": config.seed, **meta,
                     **({"pretrained": references} if references else {})}
        # One metadata key: safetensors writes several in a random order, and these bytes are the model id.
        save_tensors(self.path / self.WEIGHTS, state,
                     {SCORING_META_KEY: json.dumps({k: full_meta[k] for k in SCORING_META}, sort_keys=True)})
        self.write_recipe(config)
        atomic_write_json(self.path / self.META, full_meta)

    def read_meta(self) -> dict:
        path = self.path / self.META
        if not self.path.is_dir():
            raise BundleError(f"model folder not found: {self.path}")
        if not path.is_file():
            hint = " (training not finished: `adcli train --resume`)" if self.is_started else ""
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
        meta = self.read_meta()
        config = self.read_config()
        # the bundle supplies every weight: nothing pretrained is loaded while building
        model = build_method(config, meta["categories"], load_pretrained=False, source=str(self.path / self.RECIPE))
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
