"""`adcli checks` (adcli/commands/checks.py): the support call's first questions, answered offline."""

import json
import os

from typer.testing import CliRunner

from adcli.commands.checks import run_checks
from adcli.cli import app


def test_checks_report_versions_weights_disk_and_recipes(tmp_path, no_weights):
    result = run_checks(tmp_path / "not_yet")  # a folder inspect would create is checked where it would go
    assert result["ok"] and result["disk"]["writable"] and result["disk"]["checked"] == str(tmp_path)
    assert result["versions"]["torch"] and result["compute"]["torch_threads"] >= 1
    assert result["weights"]["mobilenet_v2"]["found"] is False  # no weights anywhere in this test
    assert "adcli weights pull mobilenet_v2" in result["weights"]["mobilenet_v2"]["how"]
    assert "knn" in result["recipes"]
    (no_weights / "w").mkdir()
    (no_weights / "w" / "mobilenet_v2.safetensors").write_bytes(b"")
    os.environ["ADCLI_WEIGHTS_DIR"] = str(no_weights / "w")
    try:
        assert run_checks(tmp_path)["weights"]["mobilenet_v2"]["path"].endswith("mobilenet_v2.safetensors")
    finally:
        del os.environ["ADCLI_WEIGHTS_DIR"]


def test_a_folder_that_cannot_be_written_fails_the_check(tmp_path, monkeypatch):
    import errno

    from adcli.commands import checks

    def refuse(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checks.tempfile, "NamedTemporaryFile", refuse)  # as a read-only mount would
    result = run_checks(tmp_path)
    assert not result["ok"] and result["disk"]["problem"] == "Permission denied"
    assert CliRunner().invoke(app, ["checks", "--out", str(tmp_path)]).exit_code == 5


def test_cli_prints_a_table_or_json(tmp_path):
    runner = CliRunner()
    done = runner.invoke(app, ["checks", "--out", str(tmp_path), "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["disk"]["writable"]
    done = runner.invoke(app, ["checks", "--out", str(tmp_path)])
    assert done.exit_code == 0 and "output folder" in done.stdout and "recipes" in done.stdout
