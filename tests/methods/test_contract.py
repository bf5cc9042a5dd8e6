"""Every registered method honours the contract (adcli/methods/base.py), on tiny CPU inputs."""

import numpy as np
import pytest
import torch

from adcli.data.batches import Synthesizer
from adcli.methods.base import AnomalyOutput, FitStage, GradientStage, Method, StageContext
from adcli.registry import get_method, method_names
from tests.conftest import FakeTrainImages, recipe_with_weights


@pytest.mark.parametrize("name", method_names())
def test_method_trains_one_step_of_every_stage_and_predicts(name, mobilenet_weights, tmp_path):
    config = recipe_with_weights(name, mobilenet_weights).config
    model = get_method(name).method_cls(config, ["a", "b"])
    assert isinstance(model, Method) and model.name == name and model.inference_batch_size >= 1
    size = config.data.image_size
    data = FakeTrainImages(np.random.default_rng(0).integers(0, 255, (8, size, size, 3), dtype=np.uint8), [0, 0, 0, 0, 1, 1, 1, 1],
                           ["a", "b"])
    ctx = StageContext.silent("cpu", tmp_path)
    stages = model.stages()
    assert stages and all(isinstance(s, (GradientStage, FitStage)) for s in stages)
    for stage in stages:
        if isinstance(stage, FitStage):
            stage.fit(data, ctx)
            continue
        stage_data = data if stage.make_data is None else stage.make_data(data, ctx)
        synth = None if stage.synth is None else Synthesizer(stage.synth, [], set())
        batch = stage_data.batch(np.arange(min(4, len(stage_data))), np.random.default_rng(0), synth)
        losses = stage.losses(batch, torch.Generator().manual_seed(0))
        assert torch.isfinite(losses["loss"]), (name, stage.name)
        losses["loss"].backward()
    model.eval()
    images = torch.rand(3, 3, size, size)
    out = model.predict(images, torch.tensor([0, 1, 0]))
    assert isinstance(out, AnomalyOutput) and out.anomaly_map.shape == (3, size, size) and out.score.shape == (3,)
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.score).all()
    # one image alone scores as it does inside a batch: no state shared between rows
    alone = model.predict(images[1:2], torch.tensor([1]))
    assert torch.allclose(alone.score, out.score[1:2], rtol=1e-4, atol=1e-5)
    assert model.map_range is None or len(model.map_range) == 2


def test_registering_a_class_that_breaks_the_contract_is_refused():
    import dataclasses

    from adcli.registry import register

    @dataclasses.dataclass(frozen=True)
    class NoInference:
        method: str

    with pytest.raises(TypeError, match="inference"):
        register("broken", NoInference)(type("Broken", (Method,), {}))
    assert "broken" not in method_names()
