import csv
import os
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from adcli import __version__
from adcli.cli import app
from adcli.core.errors import DataError

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
    assert len(lines) == 1 and lines[0].startswith("error: --set train.epoch=3: section 'train' has no key 'epoch'"), bad.stderr
    missing = _adcli("prepare", tmp_path / "nope", "--out", tmp_path / "p")
    assert missing.returncode == 2 and "dataset folder not found" in missing.stderr and "Traceback" not in missing.stderr
    # Brackets in a message (a path, a C++ location in a torch error) are text, not console markup.
    odd = _adcli("prepare", tmp_path / "line[/b]", "--out", tmp_path / "p")
    assert odd.returncode == 2 and "line[/b]" in odd.stderr and "Traceback" not in odd.stderr, odd.stderr


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
    for command in ("prepare", "train", "calibrate", "inspect", "report", "review", "checks", "weights"):
        result = _adcli(command, "-h")  # -h is --help everywhere
        assert result.returncode == 0 and "Usage:" in result.stdout, (command, result.stderr)
        assert "Example" in result.stdout or command == "weights", command
    for command in (("calibrate", tmp_path / "nope", "--data", tmp_path),
                    ("report", tmp_path / "nope", "--data", tmp_path, "--out", tmp_path / "r"),
                    ("inspect", tmp_path, "--model", tmp_path / "nope", "--out", tmp_path / "o")):
        missing = _adcli(*command)
        assert missing.returncode == 2 and "model folder not found" in missing.stderr, (command, missing.stderr)


def test_help_lists_the_built_in_recipes():
    text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "diad, diffusionad, drdc, knn, timenet, uniad" in text


def test_export_help_names_the_extras_to_install():
    result = subprocess.run([sys.executable, "-m", "adcli", "export", "-h"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    text = " ".join(result.stdout.split())  # rich's help markup once ate the brackets: "pip install 'adcli'"
    assert result.returncode == 0 and "Needs `pip install 'adcli[onnx]'` (and `adcli[openvino]`)." in text, text


def test_errors_say_what_to_do(tmp_path, demo_root):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next((demo_root / "disc" / "train" / "good").iterdir()), flat / "a.png")
    done = _adcli("prepare", flat, "--out", tmp_path / "p")
    assert done.returncode == 2 and "use --format folder" in done.stderr
    broken = tmp_path / "broken" / "c" / "train" / "good"
    broken.mkdir(parents=True)
    (broken / "a.png").write_text("not a png")
    done = _adcli("prepare", tmp_path / "broken", "--out", tmp_path / "p")
    assert done.returncode == 2 and "no readable training images" in done.stderr and "a.png" in done.stderr
    done = _adcli("inspect", flat, flat / "a.png", "--model", tmp_path, "--out", tmp_path / "o")
    assert done.returncode == 2 and f"give one folder, or image files, not both: {flat} is a folder" in done.stderr
    done = _adcli("train", "--recipe", "knn", "--set", "train.epochs=3", "--data", tmp_path, "--out", tmp_path / "r")
    assert "recipe knn has no section 'train' (it has: backbone, data, inference, knn" in done.stderr


def test_threads_option_and_variable_set_torchs_threads(tmp_path):
    import json

    assert json.loads(_adcli("--threads", "1", "checks", "--out", tmp_path, "--json").stdout)["compute"]["torch_threads"] == 1
    env = subprocess.run([sys.executable, "-m", "adcli", "checks", "--out", str(tmp_path), "--json"], capture_output=True,
                         text=True, env={**__import__("os").environ, "ADCLI_THREADS": "1"})
    assert json.loads(env.stdout)["compute"]["torch_threads"] == 1
    assert _adcli("--threads", "0", "checks").returncode == 2
