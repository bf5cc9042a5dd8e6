"""adcli: diffusion-based visual anomaly detection trained on good images only.

    import adcli
    det = adcli.load("runs/knn")          # a trained run folder
    result = det.predict("part.png")      # .score, .verdict, .threshold, .anomaly_map, .category
    result.score_normalised               # 0.5 at the threshold on every model and product; None: uncalibrated
    det.warnings                          # a test-profile model, categories its self-check found it blind on
"""

__version__ = "0.1.0"


def load(run, device: str = "auto", batch_size: int | None = None, backend: str = "torch"):
    """A trained run folder -> adcli.inference.detector.Detector (imported here, so `import adcli` stays light).
    backend: torch, or onnx / openvino after `adcli export`. A model that should not be trusted on a line
    (`Detector.warnings`: a test profile, a weak self-check) is named in an adcli.core.errors.ModelWarning,
    as calibrate and inspect name it on the console."""
    import warnings

    from adcli.core.errors import ModelWarning
    from adcli.inference.detector import Detector

    detector = Detector.load(run, device, batch_size, backend)
    for line in detector.warnings:
        warnings.warn(line, ModelWarning, stacklevel=2)
    return detector


def __getattr__(name: str):
    """`adcli.Detector` (from adcli.inference.detector), imported on first use."""
    if name == "Detector":
        from adcli.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'adcli' has no attribute {name!r}")
