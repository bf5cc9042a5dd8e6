"""Training in several processes: torchrun + DistributedDataParallel (gloo on CPU) gives the model a
single process gives with the same global batch, accumulated over the same micro-batches."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adcli.core.distributed import Ranks, micro_batches
from adcli.core.errors import AdcliError
from adcli.model.recipe import load_recipe
from adcli.bundle.model_bundle import Bundle
from adcli.bundle.training_state import TrainingRun
from adcli.commands.train import train
from tests.conftest import interrupt_on_call


@pytest.mark.parametrize("world, accumulate", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2)])
def test_micro_batches_share_every_batch_once_in_order(world, accumulate):
    indices = np.array([7, 3, 9, 1, 4, 8, 0, 2, 6, 5, 11])
    shares = [micro_batches(indices, world, accumulate, rank) for rank in range(world)]
    numbers = [n for share in shares for n, _ in share]
    assert numbers == list(range(world * accumulate))  # rank r: micro-batches r·A … r·A + A − 1
    assert np.concatenate([part for share in shares for _, part in share]).tolist() == indices.tolist()
    sizes = [len(part) for share in shares for _, part in share]
    assert max(sizes) - min(sizes) <= 1


def test_a_batch_too_small_to_share_is_named():
    with pytest.raises(AdcliError, match="batch of 3 cannot be shared by 2 process.*accumulate 2"):
        micro_batches(np.arange(3), 2, 2, 0)


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks, dev = Ranks.from_environment(torch.device("cpu"))
    assert (ranks.world, ranks.is_main, ranks.distributed, dev.type) == (1, True, False, "cpu")
    assert ranks.share(5) == [0, 1, 2, 3, 4] and ranks.mean({"loss": 2.0}, dev) == {"loss": 2.0}


def test_torchrun_argv_replaces_devices_by_a_standalone_launch():
    from adcli.core.distributed import torchrun_argv

    argv = ["train", "--recipe", "knn", "--devices", "2", "--data", "p", "--out", "r"]
    cmd = torchrun_argv(argv, 2, python="py")
    assert cmd[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "adcli", "train", "--recipe", "knn", "--data", "p", "--out", "r"]
    assert torchrun_argv(["train", "--devices=4", "--out", "r"], 4, python="py")[-4:] == ["adcli", "train", "--out", "r"]


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def _history(run):
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _torchrun(args, env):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "adcli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_gloo_processes_through_torchrun_equal_one_process(prepared, mobilenet_weights, tmp_path, monkeypatch):
    """TimeNet: three gradient stages (synthetic anomalies, reflow pairs shared between the ranks, dropout-free
    UNets). Two ranks × accumulate 1 against one process × accumulate 2: the same micro-batches and draws."""
    recipe = ["--recipe", "timenet", "--profile", "test", "--set", f"backbone.weights={mobilenet_weights}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("WORLD_SIZE", None)
    one = train(prepared, tmp_path / "one", load_recipe("timenet", "test", [f"backbone.weights={mobilenet_weights}",
                                                                            "engine.accumulate=2"]), device="cpu")
    two = tmp_path / "two"
    _torchrun(["train", *recipe, "--data", str(prepared), "--out", str(two), "--device", "cpu"], env)

    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, f"largest weight difference {worst}"
    rows_one, rows_two = _history(one), _history(two)
    assert [r["stage"] for r in rows_one] == [r["stage"] for r in rows_two] == ["flow", "reflow1", "tpn"]
    for r1, r2 in zip(rows_one, rows_two):  # epoch losses: the mean over both ranks
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), rel=1e-4, abs=1e-6)
    meta = Bundle(two).read_meta()
    assert meta["processes"] == 2 and "processes" not in Bundle(one).read_meta()
    log = (two / "train.log").read_text(encoding="utf-8")
    assert log.count(" train: method timenet") == 1 and "2 processes" in log  # rank 0 alone writes
    assert "each batch of 4 in 2 micro-batches (2 processes × accumulate 1)" in log

    # Started in one process (accumulate 2), killed in its last stage, resumed on two: the same model.
    from adcli.model.methods.timenet import TimeNet

    interrupt_on_call(monkeypatch, TimeNet, "_tpn_losses", 3)
    with pytest.raises(KeyboardInterrupt):
        train(prepared, tmp_path / "killed", load_recipe("timenet", "test", [f"backbone.weights={mobilenet_weights}",
                                                                             "engine.accumulate=2"]), device="cpu")
    _torchrun(["train", "--resume", "--data", str(prepared), "--out", str(tmp_path / "killed"), "--device", "cpu"], env)
    c = _weights(tmp_path / "killed")
    worst = max(float((a[k].float() - c[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, f"resumed on two processes: largest weight difference {worst}"
    log = (tmp_path / "killed" / "train.log").read_text(encoding="utf-8")
    assert "stage flow: done" in log and "each batch of 4 in 2 micro-batches (2 processes × accumulate 1)" in log


def test_accumulated_run_with_ema_and_dropout_resumes_exactly(prepared, mobilenet_weights, tmp_path, monkeypatch):
    """UniAD (dropout, feature jitter) with accumulate 2 and an EMA, killed in its second epoch: the resumed run
    ends with the uninterrupted run's weights, bit for bit (EMA weights and every draw restored)."""
    from adcli.model.methods.uniad import UniADBase

    def recipe(*more):
        return load_recipe("uniad", "test", [f"backbone.weights={mobilenet_weights}", "engine.accumulate=2", *more])

    full = train(prepared, tmp_path / "full", recipe("engine.ema_decay=0.5"), device="cpu")
    plain = train(prepared, tmp_path / "plain", recipe(), device="cpu")
    interrupt_on_call(monkeypatch, UniADBase, "losses", 11)  # 16 images, batches of 4 in 2 micro-batches: 8 calls an epoch
    with pytest.raises(KeyboardInterrupt):
        train(prepared, tmp_path / "killed", recipe("engine.ema_decay=0.5"), device="cpu")
    monkeypatch.undo()
    train(prepared, tmp_path / "killed", None, resume=True, device="cpu")
    a, b, c = _weights(full), _weights(tmp_path / "killed"), _weights(plain)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trained = [k for k in a if k.startswith("base.reconstructor.")]
    assert trained and any(not torch.equal(a[k], c[k]) for k in trained)  # the EMA is what was stored
    assert len(_history(full)) == 2 and len(_history(tmp_path / "killed")) == 2


def test_a_resume_keeps_the_micro_batches_it_started_with(prepared, mobilenet_weights, tmp_path, monkeypatch):
    from adcli.commands.train.stages import micro_batch_count as _micro_batches

    run = TrainingRun(tmp_path / "run")
    config = load_recipe("uniad", "test", [f"backbone.weights={mobilenet_weights}", "engine.accumulate=2"]).config
    run.start(config, tmp_path / "recipe.yaml", "test", micro_batches=4)  # started on 2 processes
    assert _micro_batches(config, Ranks(0, 1), run, resume=True) == 4  # one process: accumulate 4
    assert _micro_batches(config, Ranks(0, 4), run, resume=True) == 4
    with pytest.raises(AdcliError, match="4 micro-batches.*resume it on 1, 2, 4 process"):
        _micro_batches(config, Ranks(0, 3), run, resume=True)
    assert _micro_batches(config, Ranks(0, 3), run, resume=False) == 6


def test_mixed_precision_is_for_cuda_only(monkeypatch):
    from adcli.core.config import EngineConfig
    from adcli.commands.train.loop import amp_dtype as _amp_dtype

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert _amp_dtype(EngineConfig(amp="bf16"), cpu) is None  # CPU training stays fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert _amp_dtype(EngineConfig(), cuda) == torch.bfloat16
    assert _amp_dtype(EngineConfig(amp="off"), cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 or T4
    assert _amp_dtype(EngineConfig(), cuda) == torch.float16 and _amp_dtype(EngineConfig(amp="fp16"), cuda) == torch.float16


def test_bad_engine_settings_are_named():
    from adcli.core.errors import RecipeError

    for key, match in [("engine.accumulate=0", "accumulate must be >= 1"), ("engine.ema_decay=1.5", "ema_decay"),
                       ("engine.amp=fp8", "amp must be auto, bf16, fp16 or off")]:
        with pytest.raises(RecipeError, match=match):
            load_recipe("timenet", "test", [key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision (autocast + gradient scaler) needs a CUDA GPU; "
                    "none here")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(prepared, mobilenet_weights, tmp_path, amp):
    run = train(prepared, tmp_path / amp, load_recipe("timenet", "test", [f"backbone.weights={mobilenet_weights}",
                                                                         f"engine.amp={amp}"]), device="cuda")
    weights = _weights(run)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert f"autocast {'bfloat16' if amp == 'bf16' else 'float16'}" in (run / "train.log").read_text(encoding="utf-8")
