import csv
import subprocess
import sys

from typer.testing import CliRunner

from adcli import __version__
from adcli.cli import app
from adcli.errors import DataError

runner = CliRunner()


def _adcli(*args):
    return subprocess.run([sys.executable, "-m", "adcli", *map(str, args)], capture_output=True, text=True)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    bad = _adcli("train", "--recipe", "diffusionad", "--set", "train.epoch=3", "--data", tmp_path, "--out", tmp_path / "r")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --set train.epoch=3: unknown key 'train.epoch'"), bad.stderr
    missing = _adcli("prepare", tmp_path / "nope", "--out", tmp_path / "p")
    assert missing.returncode == 2 and "dataset folder not found" in missing.stderr and "Traceback" not in missing.stderr


def test_prepare_train_inspect_through_the_cli(demo_root, tmp_path):
    prep, run, out = tmp_path / "prep", tmp_path / "run", tmp_path / "out"
    result = runner.invoke(app, ["prepare", str(demo_root), "--out", str(prep)])
    assert result.exit_code == 0, result.output
    assert (prep / "manifest.jsonl").is_file()
    result = runner.invoke(app, ["train", "--recipe", "diffusionad", "--profile", "test", "--data", str(prep),
                                 "--out", str(run), "--device", "cpu", "--set", "train.batch_size=2"])
    assert result.exit_code == 0, result.output
    assert "batch_size: 2" in (run / "recipe.yaml").read_text()
    result = runner.invoke(app, ["inspect", str(demo_root / "weave" / "test"), "--model", str(run), "--out", str(out),
                                 "--category", "weave", "--device", "cpu", "--settle-seconds", "0"])
    # no threshold: no silent pass (main() turns this error into exit 2)
    assert isinstance(result.exception, DataError) and "adcli calibrate" in str(result.exception)
    result = runner.invoke(app, ["inspect", str(demo_root / "weave" / "test"), "--model", str(run), "--out", str(out),
                                 "--category", "weave", "--device", "cpu", "--settle-seconds", "0", "--scores-only"])
    assert result.exit_code == 6, result.output
    assert "Speed:" in result.output
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_every_command_imports_in_a_fresh_process(tmp_path):
    """Each command's module graph loads on its own (catches import cycles a shared test process hides)."""
    for command in ("prepare", "train", "calibrate", "inspect", "report", "weights"):
        result = _adcli(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
    for command in (("calibrate", tmp_path / "nope", "--data", tmp_path),
                    ("report", tmp_path / "nope", "--data", tmp_path, "--out", tmp_path / "r"),
                    ("inspect", tmp_path, "--model", tmp_path / "nope", "--out", tmp_path / "o")):
        missing = _adcli(*command)
        assert missing.returncode == 2 and "model folder not found" in missing.stderr, (command, missing.stderr)
