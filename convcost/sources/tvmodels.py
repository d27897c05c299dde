"""torchvision's model builders, every namespace: classification, segmentation, detection
(keypoint and instance segmentation included), video, optical flow and quantized.

A builder is called with no weights at all: ``weights=None`` and, for builders that have it,
``weights_backbone=None`` unless the user names one (nothing is downloaded). Each namespace
has a default input, the one torchvision's published ``_ops`` figures were counted at: a batch
of one 224 x 224 image for classification, 520 x 520 for segmentation, a list of one
3 x 224 x 224 image for detection (the model's own transform resizes it), 16 frames at the
weights' crop size for video, two 512 x 512 frames for optical flow.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from convcost.errors import ModelError, first_line, kwargs_text
from convcost.inputs import Example, Seq, TensorSpec

NAMESPACES = ("classification", "segmentation", "detection", "video", "optical_flow",
              "quantization")
NO_DOWNLOAD = ("weights", "weights_backbone")  # builder arguments set to None unless given


def namespace_of(builder: Any) -> str | None:
    """The torchvision namespace a builder (or class) comes from, None when it is not
    torchvision's: ``torchvision.models.detection.ssd`` -> detection."""
    mod = getattr(builder, "__module__", "") or ""
    if not mod.startswith("torchvision.models"):
        return None
    parts = mod.split(".")
    return parts[2] if len(parts) > 3 and parts[2] in NAMESPACES else "classification"


def _crop(name: str, default: int) -> int:
    """The crop size of the builder's first published weights (``default`` without any)."""
    try:
        import torchvision

        first = next(iter(torchvision.models.get_model_weights(name)))
        size = getattr(first.transforms(), "crop_size", None)
        return int(size[0]) if size else default
    except Exception:
        return default


def _image(shape: tuple[int, ...]) -> Example:
    return Example((TensorSpec(shape),))


DEFAULT_INPUTS: dict[str, Callable[[str], Example]] = {
    "classification": lambda name: _image((1, 3, 224, 224)),
    "quantization": lambda name: _image((1, 3, 224, 224)),
    "segmentation": lambda name: _image((1, 3, 520, 520)),
    "detection": lambda name: Example((Seq("list", (TensorSpec((3, 224, 224)),)),)),
    "video": lambda name: _image((1, 3, 16, _crop(name, 112), _crop(name, 112))),
    "optical_flow": lambda name: Example((TensorSpec((1, 3, 512, 512)),
                                          TensorSpec((1, 3, 512, 512)))),
}


def default_example(builder: Any, name: str) -> Example | None:
    """The input torchvision published this builder's figures at (None: not torchvision's)."""
    ns = namespace_of(builder)
    return DEFAULT_INPUTS[ns](name) if ns is not None else None


def no_download(builder: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``weights`` and ``weights_backbone`` set to None where the builder takes
    them and the user did not name them."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    out = dict(kwargs)
    for arg in NO_DOWNLOAD:
        if arg in params and arg not in out:
            out[arg] = None
    return out


def _import() -> Any:
    import torch

    try:
        import torchvision
    except ImportError as e:
        raise ModelError("torchvision is not installed; install it with pip install "
                         "'convcost[vision]' (or pip install torchvision matching your torch)"
                         ) from e
    except Exception as e:  # an installed torchvision built for another torch
        raise ModelError(f"torchvision is installed but fails to import ({first_line(e)}); "
                         "install the torchvision release that matches torch "
                         f"{torch.__version__}") from e
    return torchvision


def available(tv: Any) -> dict[str, list[str]]:
    """Every builder name, by namespace."""
    out: dict[str, list[str]] = {}
    for n in sorted(tv.models.list_models()):
        out.setdefault(namespace_of(tv.models.get_model_builder(n)) or "other", []).append(n)
    return out


def build(source: str, name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, Example | None]:
    """``torchvision:NAME``: the model (no weights) and its namespace's default input."""
    try:
        tv = _import()
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from e
    names = tv.models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        listing = "; ".join(f"{ns}: {', '.join(ns_names)}"
                            for ns, ns_names in available(tv).items())
        raise ModelError(f"{source}: torchvision has no model {name!r}; {hint}available "
                         f"({len(names)}): {listing}")
    builder = tv.models.get_model_builder(name)
    args = no_download(builder, kwargs)
    try:
        model = builder(**args)
    except Exception as e:
        shown = f" with {kwargs_text(kwargs)}" if kwargs else ""
        raise ModelError(f"{source}: torchvision could not build it{shown}: "
                         f"{first_line(e)}") from e
    return model, default_example(builder, name)
