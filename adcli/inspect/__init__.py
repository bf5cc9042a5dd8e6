"""`adcli inspect`: score a folder of images for cron (folder.py), reading files safely (intake.py)
and drawing heatmaps (render.py)."""

from adcli.inspect.folder import RESULT_FIELDS, VERDICTS, InspectSummary, inspect_folder

__all__ = ["RESULT_FIELDS", "VERDICTS", "InspectSummary", "inspect_folder"]
