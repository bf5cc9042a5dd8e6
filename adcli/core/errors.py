"""Errors a user can cause. Each carries a one-line message and the process exit code."""


class AdcliError(Exception):
    """Base class: the CLI prints `error: <message>` and exits with `exit_code`.

    Exit codes of every command: 0 done (inspect: no defects), 1 inspect found defects, 2 usage,
    configuration, data or model error, 3 inspect ran but some files could not be judged, 4 an
    unexpected error (a bug: the traceback goes to a log file), 5 results could not be written
    (disk full, read-only, not a folder), 6 inspect scored images of an uncalibrated category without
    verdicts (--scores-only, or --category auto on a partly calibrated model), 7 calibrate wrote the
    thresholds of some categories and left out others (too few normals; PartlyCalibrated).
    """

    exit_code = 2


class RecipeError(AdcliError):
    """Bad recipe file, unknown/missing key, wrong type, unknown profile."""


class UsageError(AdcliError):
    """A command-line value that cannot be used (a malformed list, an unknown choice)."""


class DataError(AdcliError):
    """Missing folders, empty datasets, unreadable manifests."""


class ImageError(AdcliError):
    """One image could not be decoded; callers usually record it and carry on."""


class BundleError(AdcliError):
    """A model bundle is missing, incomplete or of an incompatible format."""


class OutputError(AdcliError):
    """Results cannot be written: disk full, read-only or missing permission, --out is a file."""

    exit_code = 5


class PartlyCalibrated(AdcliError):
    """`adcli calibrate` wrote the calibration, but some categories of the call had too few normals and
    were left out (each with a warning). Raised after the write: `calibration` is what was written."""

    exit_code = 7

    def __init__(self, calibration, left_out: list[str], calibrated: list[str]):
        super().__init__(f"calibrated {', '.join(calibrated)}; left out {', '.join(left_out)} (too few calibration "
                         "normals: see the warnings above)")
        self.calibration, self.left_out, self.calibrated = calibration, left_out, calibrated


class Stopped(BaseException):
    """A signal (SIGTERM: `kill`, a scheduler, a container stop) that ends a long command as Ctrl-C does,
    so `finally` blocks and logs still run. The CLI exits 128 + the signal's number, as a shell reports it.
    Not a KeyboardInterrupt, which Typer turns into exit 130; not an Exception, which handlers swallow."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ModelWarning(UserWarning):
    """A model that loads but should not be trusted on a line (trained with a test profile, or blind to
    defects on a category by its calibration self-check): `adcli.load` warns with it once per line."""
