"""`adcli inspect`: score a folder of images for cron or as a long-running watch (folder.py), or given
image files (files.py), reading files safely (intake.py) and drawing heatmaps (render.py)."""

from adcli.commands.inspect.files import inspect_files, inspect_paths
from adcli.commands.inspect.folder import RESULT_FIELDS, VERDICTS, InspectSummary, inspect_folder, watch_folder

__all__ = ["RESULT_FIELDS", "VERDICTS", "InspectSummary", "inspect_files", "inspect_folder", "inspect_paths",
           "watch_folder"]
