"""adcli: diffusion-based visual anomaly detection trained on good images only."""

__version__ = "0.1.0"
