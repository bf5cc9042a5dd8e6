import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from adcli.model.nets.startup import meta_without_init


def _fresh_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_loading_a_torchvision_backbone_leaves_torch_dynamo_unimported_and_usable_later():
    out = _fresh_python("""
        import sys, torch
        from adcli.model.nets.features import BackboneConfig, FeatureExtractor, random_backbone_state
        config = BackboneConfig("mobilenet_v2", ("features.3",))
        FeatureExtractor(config, random_backbone_state(config))
        print("dynamo imported:", "torch._dynamo" in sys.modules)
        import torchvision.ops
        boxes = torchvision.ops.roi_align(torch.rand(1, 3, 8, 8), [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 2)
        print("roi_align:", tuple(boxes.shape))
        import torch._dynamo
        print("real dynamo:", hasattr(torch._dynamo, "disable") and hasattr(torch._dynamo.utils, "counters"))
    """)
    assert "dynamo imported: False" in out
    assert "roi_align: (1, 3, 2, 2)" in out
    assert "real dynamo: True" in out


def test_a_torchvision_that_needs_more_of_torch_dynamo_is_imported_plainly():
    out = _fresh_python("""
        import sys, types

        class RefuseUnderStandIn:  # as if torchvision used more of torch._dynamo than the stand-in has
            def find_spec(self, name, path=None, target=None):
                dynamo = sys.modules.get("torch._dynamo")
                if name == "torchvision.ops" and dynamo is not None and not hasattr(dynamo, "disable"):
                    raise ImportError("needs torch._dynamo.disable")
                return None

        sys.meta_path.insert(0, RefuseUnderStandIn())
        from adcli.model.nets.startup import import_torchvision
        torchvision = import_torchvision()
        print("ops:", hasattr(torchvision.ops, "roi_align"), "real dynamo:", hasattr(sys.modules["torch._dynamo"], "disable"))
    """)
    assert "ops: True real dynamo: True" in out


def test_meta_build_skips_initialisers_only_on_meta_tensors():
    with meta_without_init():
        layer = nn.Linear(4, 3)
        on_cpu = torch.zeros(2, device="cpu")
        nn.init.ones_(on_cpu)
    assert layer.weight.is_meta and layer.bias.is_meta
    assert on_cpu.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_meta_built_network_loaded_with_a_state_computes_what_torchvision_builds(name):
    import torchvision

    reference = torchvision.models.get_model(name, weights=None).eval()
    with meta_without_init():
        built = torchvision.models.get_model(name, weights=None)
    built.load_state_dict(reference.state_dict(), strict=True, assign=True)
    images = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(built.eval()(images), reference(images))
