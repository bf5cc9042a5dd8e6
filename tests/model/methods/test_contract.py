"""Every registered method honours the contract (adcli/model/methods/base.py), on tiny CPU inputs."""

import numpy as np
import pytest
import torch

from adcli.data.batches import Synthesizer
from adcli.model.methods.base import AnomalyOutput, FitStage, GradientStage, Method, StageContext
from adcli.model.registry import get_method, method_names
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

    from adcli.model.registry import register

    @dataclasses.dataclass(frozen=True)
    class NoInference:
        method: str

    with pytest.raises(TypeError, match="inference"):
        register("broken", NoInference)(type("Broken", (Method,), {}))
    assert "broken" not in method_names()


def _standardised_overrides(config) -> list[str] | None:
    """The overrides that make a recipe's image score standardised; None where its scoring has no such key."""
    import dataclasses

    keys = {f.name for f in dataclasses.fields(config.scoring)} if "scoring" in {f.name for f in dataclasses.fields(config)} else set()
    if "image_score" not in keys:
        return None
    count = "normal_images" if "normal_images" in keys else "normaliser_images"
    return ["scoring.image_score=standardised", f"scoring.{count}=2"]


@pytest.mark.parametrize("name", method_names())
def test_the_standardised_image_score_is_fitted_and_applied_by_normal_maps_alone(name, mobilenet_weights, tmp_path):
    """adcli/model/postprocess.py owns the standardised score: a method only declares it (`image_scoring`), never
    makes the statistics, their stage or the standardised map itself."""
    import inspect

    from adcli.model.postprocess import NormalMapStatistics, image_score

    method_cls = get_method(name).method_cls
    source = inspect.getsource(inspect.getmodule(method_cls))
    assert "NormalMapStatistics" not in source and "map_stats" not in source and "score_scale\"" not in source
    overrides = _standardised_overrides(recipe_with_weights(name, mobilenet_weights).config)
    if overrides is None:
        assert method_cls.image_scoring is Method.image_scoring  # no standardised score to declare
        return
    config = recipe_with_weights(name, mobilenet_weights, overrides).config
    model = method_cls(config, ["a", "b"])
    assert "score_scale" not in [s.name for s in model.method_stages()]
    score_scale = model.stages()[-1]
    assert score_scale.name == "score_scale" and "map_stats." in score_scale.keeps
    assert isinstance(model.map_stats, NormalMapStatistics)
    size = config.data.image_size
    data = FakeTrainImages(np.random.default_rng(1).integers(0, 255, (6, size, size, 3), dtype=np.uint8), [0, 0, 0, 1, 1, 1],
                           ["a", "b"])
    ctx = StageContext.silent("cpu", tmp_path)
    for stage in model.stages():  # every FitStage the statistics may need (DRDC's fusion units), then score_scale
        if isinstance(stage, FitStage):
            stage.fit(data, ctx)
    assert not torch.equal(model.map_stats.spread, torch.ones_like(model.map_stats.spread))  # fitted
    model.eval()
    images, ids = torch.rand(2, 3, size, size), torch.tensor([0, 1])
    out = model.predict(images, ids)
    scoring = model.image_scoring()
    expected = scoring.pool(model.map_stats.standardise(out.anomaly_map, ids))
    assert torch.equal(out.score, expected) and torch.equal(image_score(scoring, model.map_stats, out.anomaly_map, ids), expected)
    plain = method_cls(recipe_with_weights(name, mobilenet_weights).config, ["a", "b"])
    assert plain.map_stats is None and "score_scale" not in [s.name for s in plain.stages()]
