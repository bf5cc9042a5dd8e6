"""Errors a user can cause. Each carries a one-line message and the process exit code."""


class AdcliError(Exception):
    """Base class: the CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 2


class RecipeError(AdcliError):
    """Bad recipe file, unknown/missing key, wrong type, unknown profile."""


class DataError(AdcliError):
    """Missing folders, empty datasets, unreadable manifests."""


class ImageError(AdcliError):
    """One image could not be decoded; callers usually record it and carry on."""


class BundleError(AdcliError):
    """A model bundle is missing, incomplete or of an incompatible format."""
