"""A model's calibration on disk: calibration.json and the router it names, written and read as one unit.

    RUN/calibration.json            per-category thresholds (adcli calibrate; the previous one kept as
                                    calibration.prev.json), with its outputs cache in .calibration-cache/
    RUN/routing-HASH.safetensors    the category router for --category auto (adcli/model/routing.py), named by
                                    the first 16 hex of its SHA-256, which calibration.json records
                                    (older calibrations: RUN/routing.safetensors)

A calibration is replaced as one unit: the router is written under a name of its own content, then
calibration.json (naming it) is replaced atomically, the single commit point; a kill at any moment
leaves the old calibration with its own router or the new one with its own. The values themselves are
typed in adcli/bundle/calibration.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from adcli.bundle.calibration import Calibration
from adcli.core.errors import BundleError
from adcli.core.io import atomic_write_json, sha256_file
from adcli.model.routing import CategoryRouter

# A calibration.json is refused unread above this: one measured from a test run holds ~1.4 KB per
# category with 24 normals (each normal's score is ~25 bytes), so 64 MiB is over two million normal
# scores; a padded file (a million copies of a category: 2.8 GB) would otherwise cost gigabytes and
# minutes on every load.
CALIBRATION_MAX_BYTES = 64 << 20


class CalibrationFiles:
    CALIBRATION = "calibration.json"
    CALIBRATION_BACKUP = "calibration.prev.json"
    CALIBRATION_CACHE = ".calibration-cache"
    ROUTING = "routing.safetensors"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def calibration_cache(self) -> Path:
        return self.path / self.CALIBRATION_CACHE

    def read_calibration(self):
        """-> Calibration or None when the model is not calibrated (checked as a file, not against the
        model: `load_calibration` does that)."""
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
