"""`adcli inspect`: score a folder of images for cron or as a long-running watch (folder.py), reading
files safely (intake.py) and drawing heatmaps (render.py)."""

from adcli.commands.inspect.folder import RESULT_FIELDS, VERDICTS, InspectSummary, inspect_folder, watch_folder

__all__ = ["RESULT_FIELDS", "VERDICTS", "InspectSummary", "inspect_folder", "watch_folder"]
