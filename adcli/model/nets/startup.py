"""Keep torch's compiler stack (`torch._dynamo`, ~1 s to import) out of `adcli inspect`'s start-up.

Two things imported it while a model was loaded, though nothing adcli runs needs it:
- `import torchvision` imports all of `torchvision.ops`, whose `roi_align.py` takes one function from
  `torch._dynamo.utils` at import time. `import_torchvision` puts a stand-in there for the length of the
  import (its one function imports the real module if it is ever called) and removes it afterwards, so
  anything that needs `torch._dynamo` later (torch.compile, ONNX export) loads the real one.
- a network built on the meta device runs its random initialisers through torch's Python reference
  implementations, which import `torch._dynamo` on first use. `meta_without_init` builds on the meta
  device and skips the initialisers: on meta tensors there are no values for them to set anyway.
Measured on the 2-core development machine (torch 2.14.1 / torchvision 0.29.1): see the CHANGELOG.
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch
from torch.overrides import TorchFunctionMode

_INITIALISERS = frozenset({
    "normal_", "uniform_", "zero_", "fill_", "constant_", "zeros_", "ones_", "eye_", "dirac_", "orthogonal_",
    "trunc_normal_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_", "sparse_",
})


def _deferred_is_compile_supported(device_type):
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def import_torchvision() -> types.ModuleType:
    """torchvision, imported without importing torch._dynamo (a plain import if that fails)."""
    if "torchvision" in sys.modules or "torch._dynamo" in sys.modules:
        import torchvision

        return torchvision
    package = types.ModuleType("torch._dynamo")
    utils = types.ModuleType("torch._dynamo.utils")
    utils.is_compile_supported = _deferred_is_compile_supported
    package.utils = utils
    sys.modules["torch._dynamo"], sys.modules["torch._dynamo.utils"] = package, utils
    try:
        import torchvision
    except Exception:  # a torchvision that wants more of torch._dynamo: forget the partial import
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        torchvision = None
    finally:
        for name, stand_in in (("torch._dynamo.utils", utils), ("torch._dynamo", package)):
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
        if torch.__dict__.get("_dynamo") is package:
            del torch._dynamo
    if torchvision is None:
        import torchvision
    return torchvision


class _SkipInitialisersOnMeta(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # torch.nn.init passes its tensor by keyword when it hands itself to a mode
        tensor = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", None) in _INITIALISERS and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_without_init():
    """Build modules on the meta device without running their initialisers (load values with assign=True)."""
    with _SkipInitialisersOnMeta(), torch.device("meta"):
        yield
