"""`adcli export`: a run folder's scoring as one ONNX graph (or OpenVINO IR), and scoring through it.

The graph takes `images` (B, 3, S, S) float32 in [0, 1] at the model's size, B from 1 to
`MAX_BATCH` (`ExportedModel` cuts larger batches), and
`category_ids` (B,) int64 (indices into the bundle's categories), and returns `anomaly_map`
(B, S, S) and `score` (B,) float32: the same contract as `Method.predict`. The exporter traces
`Method.scoring_graph()` with `torch.export` (ONNX through onnxscript), then checks the result
against torch on images of another batch size before anything is written; a graph whose scores
differ from torch's by more than `TOLERANCE` (relative to the scores' scale) is refused.

Files: RUN/export/model.onnx (and model.xml/.bin for openvino) with RUN/export/export.json, which
names the model it was made from, so a retrained model never runs through a stale graph.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from adcli.core.errors import AdcliError, BundleError, UsageError
from adcli.core.io import atomic_write_json
from adcli.model.methods.base import AnomalyOutput
from adcli.bundle.model_bundle import Bundle

FORMATS = ("onnx", "openvino")
BACKENDS = ("torch",) + FORMATS
EXPORT_DIR = "export"
TOLERANCE = 1e-4  # largest score difference to torch, relative to max(1, |score|)
OPSET = 18
# Largest batch the graph is traced for: diffusers' UNet upsampler (DiAD) branches at a batch of 64.
# Larger batches are cut into pieces of this size when scored.
MAX_BATCH = 63


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise UsageError(f"{module} is not installed: pip install 'adcli[{extra}]'") from None


@dataclasses.dataclass
class Agreement:
    """How closely a backend reproduced torch on the check images."""

    backend: str
    batch: int
    max_score_diff: float
    max_map_diff: float
    score_scale: float

    @property
    def ok(self) -> bool:
        return self.max_score_diff <= TOLERANCE * max(1.0, self.score_scale)


def export(run: str | Path, formats: list[str], *, check_batch: int = 3, seed: int = 0) -> dict:
    """Export RUN's scoring to RUN/export/ in the given formats; returns the export.json contents."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--format: unknown {', '.join(bad) or '(none)'} (choose from {', '.join(FORMATS)})")
    _require("onnx", "onnx")
    _require("onnxscript", "onnx")
    _require("onnxruntime", "onnx")
    if "openvino" in formats:
        _require("openvino", "openvino")
    folder = Bundle(run)
    model, meta = folder.load_model(torch.device("cpu"))
    model.eval()
    categories, size = list(meta["categories"]), int(meta["image_size"])
    graph = model.scoring_graph().eval()
    generator = torch.Generator().manual_seed(seed)
    sample = torch.rand(2, 3, size, size, generator=generator), torch.arange(2) % len(categories)
    with torch.no_grad():
        graph(*sample)  # eager first: draws the methods' fixed noise, which the trace then holds as constants

    for stale in folder.path.glob(".export-*"):  # left by an export that was killed (no cleanup ran)
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.path))
    try:
        onnx_path = staging / "model.onnx"
        _export_onnx(graph, sample, onnx_path)
        check = torch.rand(check_batch, 3, size, size, generator=generator), torch.arange(check_batch) % len(categories)
        with torch.no_grad():  # against the method's own predict, the path every torch inference takes
            out = model.predict(*check)
            want = out.anomaly_map.float(), out.score.float()
        agreements = []
        for backend in ["onnx"] + [f for f in formats if f != "onnx"]:
            if backend == "openvino":
                _save_openvino(onnx_path, staging / "model.xml")
            scorer = _open_backend(backend, staging, threads=torch.get_num_threads())
            try:
                got = scorer(check[0].numpy(), check[1].numpy())
            except Exception as error:
                raise AdcliError(f"the exported {backend} graph fails on a batch of {check_batch}: {_first_line(error)}; "
                                 "nothing written") from error
            agreement = Agreement(backend, check_batch, float(np.abs(got[1] - want[1].numpy()).max()),
                                  float(np.abs(got[0] - want[0].numpy()).max()), float(want[1].abs().max()))
            if not agreement.ok:
                raise AdcliError(f"the {backend} graph of {folder.path} disagrees with torch: scores differ by up to "
                                 f"{agreement.max_score_diff:.3g} (allowed {TOLERANCE:g} × max(1, |score|)); nothing written")
            agreements.append(agreement)
        if "onnx" not in formats:
            onnx_path.unlink()
        info = {"model_id": folder.model_id(), "method": model.name, "categories": categories, "image_size": size,
                "formats": formats, "map_range": list(model.map_range) if model.map_range else None,
                "inference_batch_size": model.inference_batch_size,
                "batch_by_category": model.export_batches_by_category, "cost_line": model.cost_line(),
                "inputs": {"images": ["batch", 3, size, size], "category_ids": ["batch"]}, "max_batch": MAX_BATCH,
                "outputs": {"anomaly_map": ["batch", size, size], "score": ["batch"]},
                "opset": OPSET, "torch": torch.__version__,
                "checked": [dataclasses.asdict(a) for a in agreements]}
        atomic_write_json(staging / "export.json", info)
        target = folder.path / EXPORT_DIR
        old = None
        if target.exists():  # swap whole folders: a reader sees the old export or the new one, never a mix
            old = target.with_name(f".{EXPORT_DIR}-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return info
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_onnx(graph: torch.nn.Module, sample: tuple[torch.Tensor, torch.Tensor], path: Path) -> None:
    import warnings

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # torch.export first and alone: its errors name the line, and no fallback may fix the batch size
            program = torch.export.export(graph, sample, dynamic_shapes=({0: batch}, {0: batch}), strict=False)
        except Exception as error:
            raise AdcliError(f"torch.export cannot trace this model's scoring: {_first_line(error)}") from error
        try:
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, verbose=False,
                                             input_names=["images", "category_ids"], output_names=["anomaly_map", "score"])
        except Exception as error:
            raise AdcliError(f"torch could not write this model's graph as ONNX: {_first_line(error)}") from error
    onnx_program.save(str(path))


def _first_line(error: Exception) -> str:
    """torch.export's errors run to pages; their first line says what failed."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _save_openvino(onnx_path: Path, xml_path: Path) -> None:
    import openvino

    # The runtime's reader and writer (no converter tool, which is where OpenVINO's telemetry lives);
    # weights stay float32 (save_model would halve them to fp16 by default).
    openvino.save_model(openvino.Core().read_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def _open_backend(backend: str, folder: Path, threads: int):
    """-> a function (images float32 (B,3,S,S), ids int64 (B,)) -> (maps, scores) as numpy."""
    if backend == "onnx":
        ort = _require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

        def run_onnx(images, ids):
            maps, scores = session.run(["anomaly_map", "score"], {"images": images, "category_ids": ids})
            return maps, scores
        return run_onnx
    if backend == "openvino":
        ov = _require("openvino", "openvino")
        # f32 inference precision: on CPUs with bf16 units OpenVINO would otherwise run in bf16 by default
        compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU",
                                           {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def run_openvino(images, ids):
            result = request.infer({"images": images, "category_ids": ids})
            return (np.array(result[compiled.output("anomaly_map")]), np.array(result[compiled.output("score")]))
        return run_openvino
    raise UsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


class ExportedModel:
    """A run's exported graph with the part of `Method`'s interface that inference uses (`predict`,
    `map_range`, `inference_batch_size`, `name`, `cost_line`)."""

    def __init__(self, run: Bundle, backend: str, threads: int | None = None):
        folder = run.path / EXPORT_DIR
        info_path = folder / "export.json"
        if not info_path.is_file():
            raise BundleError(f"{run.path} has no exported model; run `adcli export {run.path} --format {backend}` first")
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError) as error:
            raise BundleError(f"{info_path} is unreadable ({error}); run `adcli export {run.path}` again") from None
        if backend not in info.get("formats", []):
            raise BundleError(f"{run.path} was exported as {', '.join(info.get('formats', []))}, not {backend}; run "
                              f"`adcli export {run.path} --format {backend}`")
        if info.get("model_id") != run.model_id():
            raise BundleError(f"{folder} was made from another model than {run.path} holds now; run "
                              f"`adcli export {run.path} --format {backend}` again")
        self.info, self.backend, self.name = info, backend, info["method"]
        self.map_range = tuple(info["map_range"]) if info.get("map_range") else None
        self.inference_batch_size = int(info["inference_batch_size"])
        self.batch_by_category = bool(info.get("batch_by_category", False))
        self._run = _open_backend(backend, folder, threads or torch.get_num_threads())

    def cost_line(self) -> str | None:
        return self.info.get("cost_line")

    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        pixels = np.ascontiguousarray(images.detach().float().cpu().numpy())
        ids = category_ids.detach().cpu().numpy().astype(np.int64)
        maps = np.empty((len(pixels),) + pixels.shape[2:], dtype=np.float32)
        scores = np.empty(len(pixels), dtype=np.float32)
        for group in calls(ids, self.batch_by_category):
            maps[group], scores[group] = self._run(pixels[group], ids[group])
        return AnomalyOutput(torch.from_numpy(maps), torch.from_numpy(scores))


def calls(ids: np.ndarray, by_category: bool) -> list[np.ndarray]:
    """How an exported model splits a batch into graph calls: index arrays of at most MAX_BATCH images,
    in order; with `by_category`, each call holds one category's images."""
    groups = [np.flatnonzero(ids == c) for c in np.unique(ids)] if by_category else [np.arange(len(ids))]
    return [g[i:i + MAX_BATCH] for g in groups for i in range(0, len(g), MAX_BATCH)]
