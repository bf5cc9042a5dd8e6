"""adcli: diffusion-based visual anomaly detection trained on good images only.

    import adcli
    det = adcli.load("runs/knn")          # a trained run folder
    result = det.predict("part.png")      # .score, .verdict, .threshold, .anomaly_map, .category
    result.score_normalised               # 0.5 at the threshold on every model and product; None: uncalibrated
"""

__version__ = "0.1.0"


def load(run, device: str = "auto", batch_size: int | None = None, backend: str = "torch"):
    """A trained run folder -> adcli.inference.detector.Detector (imported here, so `import adcli` stays light).
    backend: torch, or onnx / openvino after `adcli export`."""
    from adcli.inference.detector import Detector

    return Detector.load(run, device, batch_size, backend)


def __getattr__(name: str):
    """`adcli.Detector` (from adcli.inference.detector), imported on first use."""
    if name == "Detector":
        from adcli.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'adcli' has no attribute {name!r}")
