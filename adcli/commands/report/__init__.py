"""`adcli report`: run a bundle on a split, compute the metrics, write tables and an HTML report."""

from adcli.commands.report.build import make_report

__all__ = ["make_report"]
