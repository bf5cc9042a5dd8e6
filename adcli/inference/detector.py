"""A trained model ready to judge images: the one inference path of inspect, calibrate, report and
the Python API.

    import adcli
    det = adcli.load("runs/knn")                 # a run folder (model bundle)
    r = det.predict("part.png")                  # a path, PIL image or H×W×3 uint8 array, or a list
    r.score, r.verdict, r.threshold, r.anomaly_map.shape   # map at the image's own size
    r.score_normalised                           # 0.5 at the threshold on every model (None: uncalibrated)

Images go through the model `inference.batch_size` at a time; while one batch is in the model, a
small thread pool decodes and resizes the next (`Detector.stream`). With `--category auto` the
router sees each batch in one call on the main thread, just before the model (in the loader threads,
one image at a time, it fought the model for the cores and cost more than knn's scoring).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image

from adcli.bundle.calibration import Calibration, CategoryCalibration, weak_self_check_lines
from adcli.data.batches import resized, to_tensor
from adcli.core.errors import AdcliError, BundleError
from adcli.core.io import read_image
from adcli.model.routing import Route
from adcli.bundle.calibration_files import CalibrationFiles
from adcli.bundle.model_bundle import Bundle
from adcli.core.device import resolve_device, scores_in_bf16

LOAD_WORKERS = 2  # decoding threads; a shop-floor PC has few cores and the model uses them too


@dataclasses.dataclass
class Prediction:
    """One image's result from `Detector.predict`."""

    category: str  # the given category, or the router's nearest one
    score: float  # raw image score (larger = more anomalous)
    anomaly_map: np.ndarray  # (H, W) float32 at the image's own size
    verdict: str  # OK | DEFECT | UNKNOWN_CATEGORY | uncalibrated
    threshold: float | None  # the category's calibrated threshold
    far_from_products: bool = False  # routed, and beyond every trained product's radius (see `verdict`)
    score_normalised: float | None = None  # in [0, 1], 0.5 at the threshold, on every model (None: uncalibrated)


P = TypeVar("P")  # what a caller's loader hands back with each result
T = TypeVar("T")  # the items a caller streams (paths, indices, images)


@dataclasses.dataclass
class ToScore(Generic[P]):
    """What a loader returns to have an image judged; anything else it returns passes through unscored."""

    image: Image.Image
    payload: P  # given back with the result (inspect: the file's row so far)
    category: str | None = None  # None: `fixed_category` (the router's nearest one with --category auto)


@dataclasses.dataclass
class Judged:
    """The model's result for one image, at the model's resolution."""

    category: str  # the given one, or the router's nearest
    score: float  # raw image score (larger = more anomalous)
    anomaly_map: np.ndarray  # (S, S) float32
    verdict: str  # OK | DEFECT | UNKNOWN_CATEGORY | uncalibrated (`Detector.verdict`)
    threshold: float | None  # the category's calibrated threshold
    score_normalised: float | None  # in [0, 1], 0.5 at the threshold (adcli/stats/normalised.py); None: uncalibrated
    far_from_products: bool  # routed, and beyond every trained product's radius: scored under its nearest
    prepare_ms: float  # resizing (and the router's view) in the loader thread
    route_ms: float  # this image's share of its batch's routing time
    infer_ms: float  # and of its batch's model time


@dataclasses.dataclass
class Streamed(Generic[T, P]):
    """One item out of `Detector.stream`, in input order."""

    item: T
    payload: P  # what the loader returned (for a ToScore: its payload)
    judged: Judged | None  # None: the loader passed the item through unscored


@dataclasses.dataclass
class _ModelInput:
    """A ToScore prepared in a loader thread: resized, with the router's view while the category is open."""

    pixels: np.ndarray  # (S, S, 3) uint8
    category: str | None
    payload: Any
    route_view: np.ndarray | None
    prepare_ms: float
    route: Route | None = None
    route_ms: float = 0.0


class Detector:
    def __init__(self, bundle: Bundle, model, meta: dict, model_id: str, calibration: Calibration | None,
                 device: torch.device, batch_size: int, backend: str = "torch", router=None,
                 dropped_calibration: str | None = None):
        self.bundle, self.model, self.meta, self.model_id, self.calibration = bundle, model, meta, model_id, calibration
        self.calibration_files = CalibrationFiles(bundle.path)  # where `adcli calibrate` writes a new one
        self.device, self.batch_size, self.backend = device, batch_size, backend
        self.categories: list[str] = list(meta["categories"])
        self.image_size: int = int(meta["image_size"])
        self.router = router  # CategoryRouter or None (adcli/model/routing.py): the calibration's
        self.dropped_calibration = dropped_calibration  # why the folder's calibration was not used (see `load`)
        # Exported graphs are fp32 (their runtimes choose their own kernels).
        self.bf16 = backend == "torch" and scores_in_bf16(model.cpu_dtype, device)

    @classmethod
    def load(cls, run: str | Path | Bundle, device: str | torch.device = "auto", batch_size: int | None = None,
             backend: str = "torch", bad_calibration: str = "refuse") -> Detector:
        """A finished run folder -> Detector. batch_size: None = the recipe's `inference.batch_size`.
        backend: torch, or onnx / openvino for the graph `adcli export` wrote (CPU only).
        bad_calibration: what a calibration that cannot be used (another model's, damaged, its router
        missing) does: "refuse" (a BundleError), or "drop" (for `adcli calibrate`, which writes a new one:
        the detector is uncalibrated and `dropped_calibration` says why)."""
        from adcli.inference.export import BACKENDS, ExportedModel

        bundle = run if isinstance(run, Bundle) else Bundle(run)
        if backend not in BACKENDS:
            raise AdcliError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        if backend != "torch" and str(device) not in ("auto", "cpu"):
            raise AdcliError(f"--backend {backend} runs on the CPU; leave --device at auto or cpu")
        dev = device if isinstance(device, torch.device) else resolve_device("cpu" if backend != "torch" else device)
        if batch_size is not None and batch_size < 1:
            raise AdcliError(f"batch size must be >= 1, got {batch_size}")
        if backend == "torch":
            model, meta = bundle.load_model(dev)
        else:
            meta, model = bundle.read_meta(), ExportedModel(bundle, backend)
        if bad_calibration not in ("refuse", "drop"):
            raise ValueError(f"bad_calibration must be 'refuse' or 'drop', got {bad_calibration!r}")
        model_id = bundle.model_id()
        dropped = None
        try:
            calibration, router = CalibrationFiles(bundle.path).load_calibration(model_id, meta["categories"])
        except BundleError as exc:
            if bad_calibration == "refuse":
                raise
            calibration, router, dropped = None, None, str(exc)
        return cls(bundle, model, meta, model_id, calibration, dev, batch_size or model.inference_batch_size, backend,
                   router, dropped)

    @property
    def test_profile_warning(self) -> str | None:
        """The line calibrate and inspect print for a model trained with a recipe's `test` profile (a few
        seconds of training on tiny images: it cannot find real defects), else None."""
        if self.meta.get("profile") != "test":
            return None
        return f"{self.bundle.path} was trained with the test profile: for tests only, not for a line"

    @property
    def warnings(self) -> list[str]:
        """What a user of this model must hear before trusting an OK: the test-profile line and one line per
        category whose calibration self-check is weak (the lines calibrate and inspect print)."""
        lines = [self.test_profile_warning] if self.test_profile_warning else []
        return lines + weak_self_check_lines(self.calibration, str(self.bundle.path))

    # ---- categories and thresholds -------------------------------------------------------------
    @property
    def map_range(self) -> tuple[float, float] | None:
        return self.model.map_range

    def category_calibration(self, category: str) -> CategoryCalibration | None:
        return self.calibration.categories.get(category) if self.calibration else None

    def check_category(self, category: str) -> str:
        if category not in self.categories:
            raise AdcliError(f"category '{category}' is not in this model ({', '.join(self.categories)})")
        return category

    def uncalibrated(self, category: str | None = None) -> list[str]:
        """The categories an inspection could use (the given one, or all for auto) that have no threshold."""
        wanted = [self.check_category(category)] if category not in (None, "auto") else self.categories
        return [c for c in wanted if self.category_calibration(c) is None]

    def fixed_category(self, category: str | None = None) -> str | None:
        """`--category` -> the category every image gets, or None when the router chooses per image.
        Checked now: an unknown category, or auto without a router on a multi-category model, fails here."""
        if category not in (None, "auto"):
            return self.check_category(category)
        if self.router is not None:
            return None
        if len(self.categories) == 1:
            return self.categories[0]
        raise AdcliError("choosing the category automatically needs the router that `adcli calibrate` builds (with "
                         f"MobileNetV2 weights available; see `adcli weights list`); or give --category "
                         f"({', '.join(self.categories)})")

    def _prepare(self, to_score: ToScore) -> _ModelInput:
        """A loader's ToScore -> the model's input. Runs in a loader thread."""
        t0 = time.perf_counter()
        category = to_score.category if to_score.category is not None else self.fixed_category(None)
        view = None if category is not None else self.router.embedder.view(to_score.image)
        pixels = resized(to_score.image, self.image_size)
        return _ModelInput(pixels, category, to_score.payload, view, (time.perf_counter() - t0) * 1e3)

    # ---- batches ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def score_pixels(self, pixels: np.ndarray, categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """pixels uint8 (B, S, S, 3), one category name per row -> (scores (B,), maps (B, S, S)) float32."""
        ids = torch.tensor([self.categories.index(c) for c in categories], device=self.device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model.predict(to_tensor(pixels).to(self.device), ids)
        return out.score.float().cpu().numpy(), out.anomaly_map.float().cpu().numpy()

    def stream(self, items: Iterable[T], load: Callable[[T], ToScore[P] | P]) -> Iterator[Streamed[T, P]]:
        """Judge items in order, `batch_size` at a time. `load(item)` runs in worker threads while the
        model works on the previous batch; what it returns as a ToScore is judged, anything else (an
        error row, a skip) passes through unscored."""
        items = iter(items)

        def prepared(item: T):
            loaded = load(item)
            return self._prepare(loaded) if isinstance(loaded, ToScore) else loaded

        with ThreadPoolExecutor(LOAD_WORKERS) as pool:
            pending: collections.deque = collections.deque()

            def refill():
                while len(pending) < 2 * self.batch_size:
                    item = next(items, _END)
                    if item is _END:
                        return
                    pending.append((item, pool.submit(prepared, item)))

            refill()
            while pending:
                batch = [(item, future.result()) for item, future in
                         [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]]
                refill()  # the next batch decodes while this one is in the model
                inputs = [loaded for _, loaded in batch if isinstance(loaded, _ModelInput)]
                self._route([x for x in inputs if x.category is None])
                judged = iter(self._judge(inputs))
                for item, loaded in batch:
                    if isinstance(loaded, _ModelInput):
                        yield Streamed(item, loaded.payload, next(judged))
                    else:
                        yield Streamed(item, loaded, None)

    def _judge(self, inputs: list[_ModelInput]) -> list[Judged]:
        """One model call for a batch's inputs (categories known) -> their results, verdicts included."""
        if not inputs:
            return []
        start = time.perf_counter()
        scores, maps = self.score_pixels(np.stack([x.pixels for x in inputs]), [x.category for x in inputs])
        share = (time.perf_counter() - start) * 1e3 / len(inputs)
        results = []
        for x, score, anomaly_map in zip(inputs, scores, maps):
            far = x.route is not None and not x.route.known
            cal = self.category_calibration(x.category)
            results.append(Judged(x.category, float(score), anomaly_map, self.verdict(x.category, float(score), far),
                                  cal.threshold if cal else None, cal.normalised(score) if cal else None, far,
                                  x.prepare_ms, x.route_ms, share))
        return results

    def _route(self, unrouted: list[_ModelInput]) -> None:
        """Give each of a batch's open images its nearest category (and the route: how near), in one call."""
        if not unrouted:
            return
        start = time.perf_counter()
        routes = self.router.nearest_views(np.stack([x.route_view for x in unrouted]))
        share = (time.perf_counter() - start) * 1e3 / len(unrouted)
        for x, route in zip(unrouted, routes):
            x.category, x.route_view, x.route_ms, x.route = route.category, None, share, route

    # ---- the Python API ---------------------------------------------------------------------------
    def predict(self, images, category: str | None = None):
        """A path, PIL image or H×W(×3) uint8 array -> Prediction; a list of them -> list of Predictions.
        category: None = the only category, or the nearest calibrated one."""
        single = not isinstance(images, (list, tuple))
        decoded = [_as_image(x) for x in ([images] if single else images)]
        fixed = self.fixed_category(category)
        results = [_prediction(s.payload, s.judged) for s in self.stream(decoded, lambda image: ToScore(image, image, fixed))]
        return results[0] if single else results

    def verdict(self, category: str, score: float, far_from_products: bool = False) -> str:
        """The one place a score meets its threshold. An image far from every trained product is still
        DEFECT above its nearest product's threshold; below it, UNKNOWN_CATEGORY (it needs a look: a
        part the model was not trained on can be defective in ways its nearest product's scores miss)."""
        cal = self.category_calibration(category)
        if cal is None:
            return "uncalibrated"
        verdict = cal.verdict(score)
        return "UNKNOWN_CATEGORY" if far_from_products and verdict == "OK" else verdict


def _prediction(image: Image.Image, judged: Judged) -> Prediction:
    """A judged image -> the API's Prediction, its map at the image's own size."""
    full = np.asarray(Image.fromarray(judged.anomaly_map, mode="F").resize(image.size, Image.BILINEAR))
    return Prediction(judged.category, judged.score, full, judged.verdict, judged.threshold, judged.far_from_products,
                      judged.score_normalised)


_END = object()


def _as_image(x) -> Image.Image:
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if isinstance(x, (str, Path)):
        return read_image(x)
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3)):
            raise AdcliError(f"an image array must be uint8 H×W or H×W×3, got {x.dtype} {x.shape}")
        return Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x).convert("RGB")
    raise AdcliError(f"cannot read an image from {type(x).__name__} (give a path, PIL image or uint8 array)")

