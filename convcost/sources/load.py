"""Turn a SOURCE argument into a model and example inputs.

Forms: ``spec.yaml`` (a layer spec), ``path/to/file.py:Name``, ``package.module:Name``,
``torchvision:NAME``, ``timm:NAME`` and a saved ``torch.export`` program ``model.pt2``.
``Name`` may be an ``nn.Module`` subclass constructible with no arguments, a factory function
returning a module, or a module instance. Pickled ``.pt``/``.pth`` files are refused: unpickling
runs arbitrary code. An import path executes only the module the user named.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convcost.errors import InputError, ModelError, first_line, kwargs_text
from convcost.inputs import Call, Example
from convcost.sources.spec import Spec, build_model, load_spec

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
SOURCE_FORMS = ("spec.yaml", "file.py:Name", "package.module:Name", "torchvision:NAME",
                "timm:NAME", "model.pt2")


@dataclass
class Loaded:
    """A model ready to analyse: the module (eval mode), its input shapes (batch included), and
    where it came from. Input tensors are made only when something needs real values (timing,
    or counting on real tensors): :attr:`inputs`, seeded, after the memory guard."""

    source: str
    name: str
    model: nn.Module
    example: Example  # what the model is called with (structure, shapes, dtypes)
    kind: str  # spec | python | torchvision | timm | export
    spec: Spec | None = None
    memory_check: bool = True
    notes: list[str] = field(default_factory=list)  # what loading changed or could not keep
    _inputs: Call | None = field(default=None, repr=False)
    _estimate: tuple[int, str] | None = field(default=None, repr=False)  # memory, once

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """The shapes of every input tensor, in order (batch included)."""
        return self.example.shapes

    @property
    def estimated_macs(self) -> int | None:
        """Closed-form conv + linear MACs of a spec (None for models: unknown before counting)."""
        if self.spec is None:
            return None
        from convcost.sources.spec import conv_linear_macs

        return conv_linear_macs(self.spec, self.input_shapes[0][0])

    @property
    def inputs(self) -> Call:
        """Seeded values of :attr:`example` (made once; the memory guard first)."""
        if self._inputs is None:
            self.guard_memory("real inputs and activations")
            self._inputs = self.example.make()
        return self._inputs

    def guard_memory(self, what: str = "a real forward") -> None:
        """Refuse (exit 2) a real forward that would not fit in memory, before allocating."""
        from convcost.counting.meta import model_estimate
        from convcost.memory import guard
        from convcost.sources.spec import memory_estimate

        if self.spec is not None:
            est, why = memory_estimate(self.spec, self.input_shapes[0][0])
        else:
            if self._estimate is None and self.memory_check:
                self._estimate = model_estimate(self.model, self.example)
            est, why = self._estimate or (3 * self.example.nbytes(), "")
        guard(est, why, what=f"{self.source} ({what})", enabled=self.memory_check)


def is_spec_path(source: str) -> bool:
    return source.lower().endswith((".yaml", ".yml"))


def parse_model_args(items: tuple[str, ...] | list[str], where: str = "--model-arg") -> dict[str, Any]:
    """``KEY=VALUE`` strings to keyword arguments; KEY is a Python identifier (Unicode letters
    included, as Python allows), values are YAML scalars read by convcost's safe loader
    (``false`` -> False, ``384`` -> 384, ``0.5``, ``null``, text; a date stays text). Bad forms
    are one ``InputError`` line."""
    import keyword

    out: dict[str, Any] = {}
    if items:
        from convcost.sources.yamlio import load_yaml_text  # only when there is a value to read
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or keyword.iskeyword(key):
            raise InputError(f"{where} {item[:80]!r}: use KEY=VALUE with KEY a Python identifier, "
                             "e.g. --model-arg aux_logits=false")
        try:
            value = load_yaml_text(text, f"{where} {key}") if text.strip() else ""
        except InputError as e:
            raise InputError(f"{str(e).replace(f'{where} {key}:1: ', f'{where} {key}: ', 1)}"
                             ) from e
        if isinstance(value, (list, dict)):
            raise InputError(f"{where} {item[:80]!r}: the value must be a scalar (a number, "
                             "true/false, null or text), not a list or mapping")
        if key in out:
            raise InputError(f"{where}: {key!r} is given twice")
        out[key] = value
    return out


def load_source(source: str, *, input_shape: tuple[int, ...] | None = None,
                inputs: Example | None = None, batch: int | None = None,
                memory_check: bool = True, model_args: dict[str, Any] | None = None) -> Loaded:
    """Load any SOURCE form. Bad specs raise ``InputError`` (exit 2); models that cannot be
    loaded or built raise ``ModelError`` (exit 3). ``model_args`` are keyword arguments for
    the builder of a named source (torchvision:, timm:, a class or factory function);
    ``inputs`` (``--input``) or ``input_shape`` (``--input-shape``) say what the model is called
    with, else the builder's default (torchvision's namespaces have their own) or 1x3x224x224.
    Nothing is allocated for inputs here: see :class:`Loaded`.
    """
    kwargs = dict(model_args or {})
    if kwargs and (is_spec_path(source) or source.lower().endswith(".pt2")):
        raise InputError(f"{source}: --model-arg applies to models built by code (torchvision:, "
                         "timm:, file.py:Name, package.module:Name); a spec or a .pt2 program "
                         "is already built")
    if input_shape is not None and inputs is not None:
        raise InputError("--input and --input-shape both say what the model takes; give one")
    if is_spec_path(source):
        if input_shape is not None or inputs is not None:
            flag = "--input-shape" if input_shape is not None else "--input"
            raise InputError(f"{source}: {flag} applies to models; a spec declares its "
                             "own 'input' (use --batch to change the batch)")
        spec = load_spec(source)
        try:
            model = build_model(spec)
        except Exception as e:  # pragma: no cover - validation should catch everything
            raise ModelError(f"{source}: could not build the spec's module: {e}") from e
        b = batch or spec.batch
        return Loaded(source, spec.name, model, Example.plain([(b, *s) for s in spec.input_shapes]),
                      "spec", spec, memory_check)
    shape = _input_shape(input_shape, batch)
    low = source.lower()
    if low.endswith((".pt", ".pth", ".pkl", ".bin", ".ckpt")):
        raise ModelError(
            f"{source}: pickled model files are not loaded (unpickling can run arbitrary code). "
            "Export the model instead: torch.export.save(torch.export.export(model, (x,)), "
            "'model.pt2'), or pass the code that builds it as file.py:Name")
    if low.endswith(".pt2"):
        if inputs is not None:
            raise InputError(f"{source}: an exported program fixes its own inputs; --input "
                             "applies to models built by code")
        return _load_export(source, shape, memory_check)
    model, kind, default = _build(source, kwargs)
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"{source}: a TorchScript module (torch.jit.script/trace) cannot be "
                         "analyzed: convcost needs the Python module to record shapes per layer; "
                         "point at the class or at a factory that builds the eager module")
    example = _example(inputs, input_shape, batch, default, shape)
    return Loaded(source, source.partition(":")[2], model.eval(), example, kind,
                  memory_check=memory_check)


def _build(source: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str, Example | None]:
    """(model, kind, its default input or None) of a SOURCE built by code."""
    if ":" not in source:
        raise InputError(f"{source!r} is not a SOURCE; use one of: {', '.join(SOURCE_FORMS)}")
    prefix, _, name = source.partition(":")
    if not name:
        raise InputError(f"{source!r}: nothing after ':'; use e.g. model.py:Net")
    if prefix in ("torchvision", "tv"):
        from convcost.sources.tvmodels import build

        model, default = build(source, name, kwargs)
        return model, "torchvision", default
    if prefix == "timm":
        return _timm(source, name, kwargs), "timm", None
    if prefix.endswith(".py"):
        obj = _attr_from_file(source, Path(prefix), name)
    else:
        obj = _attr_from_module(source, prefix, name)
    from convcost.sources.tvmodels import default_example, namespace_of, no_download

    if namespace_of(obj) is not None and not isinstance(obj, nn.Module):
        kwargs = no_download(obj, kwargs)  # torchvision's builders: nothing downloaded
    return _instantiate(source, obj, name, kwargs), "python", default_example(obj, name)


def _example(inputs: Example | None, input_shape: tuple[int, ...] | None, batch: int | None,
             default: Example | None, shape: tuple[int, ...]) -> Example:
    """What the model is called with: --input (its batch changed by --batch), --input-shape,
    the builder's default, or 1x3x224x224 (the batch from --batch)."""
    if inputs is not None:
        return inputs.with_batch(batch) if batch is not None else inputs
    if input_shape is not None or default is None:
        return Example.plain([shape])
    return default.with_batch(batch) if batch is not None else default


def _input_shape(shape: tuple[int, ...] | None, batch: int | None) -> tuple[int, ...]:
    s = tuple(shape) if shape else DEFAULT_INPUT_SHAPE
    if batch is not None and shape and batch != shape[0]:
        raise InputError(f"--batch {batch} disagrees with --input-shape "
                         f"{','.join(map(str, shape))} (batch {shape[0]}); give the batch once")
    if batch is not None:
        s = (batch, *s[1:])
    return s


def _timm(source: str, name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ModelError(f"{source}: timm is not installed; install it with pip install timm") from e
    except Exception as e:
        raise ModelError(f"{source}: timm is installed but fails to import ({_one_line(e)})") from e
    try:
        return timm.create_model(name, pretrained=False, **(kwargs or {}))
    except Exception as e:
        args = f" with {kwargs_text(kwargs)}" if kwargs else ""
        raise ModelError(f"{source}: timm could not build it{args}: {_one_line(e)}") from e


def _regular_file(source: str, path: Path, what: str) -> None:
    """A model file must be a regular file: a FIFO would block the import forever, a device
    would never end (exit 3, one line)."""
    from convcost.files import regular_stat

    regular_stat(path, what, error=ModelError, prefix=f"{source}: ", missing="file")


def _attr_from_file(source: str, path: Path, attr: str) -> Any:
    _regular_file(source, path, ".py file")
    mod_name = f"convcost_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - .py always has a loader
        raise ModelError(f"{source}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # so the file's sibling imports resolve
    sys.modules[mod_name] = module
    no_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # write nothing (no __pycache__) next to the user's files
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ModelError(f"{source}: importing {path} failed: {_one_line(e)}") from e
    finally:
        sys.dont_write_bytecode = no_bytecode
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return _getattr(source, module, attr, str(path))


def _attr_from_module(source: str, modname: str, attr: str) -> Any:
    cwd_added = "" not in sys.path and "." not in sys.path
    if cwd_added:
        sys.path.insert(0, "")
    no_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        raise ModelError(f"{source}: no module named {e.name!r} (is it installed, or run from "
                         "the folder that holds it?)") from e
    except Exception as e:
        raise ModelError(f"{source}: importing {modname} failed: {_one_line(e)}") from e
    finally:
        sys.dont_write_bytecode = no_bytecode
        if cwd_added:
            sys.path.remove("")
    return _getattr(source, module, attr, modname)


def _getattr(source: str, module: Any, attr: str, where: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            avail = sorted(n for n, v in vars(module).items()
                           if not n.startswith("_") and (isinstance(v, nn.Module) or
                                                         (isinstance(v, type) and issubclass(v, nn.Module))))
            hint = f"; modules there: {', '.join(avail[:8])}" if avail else ""
            raise ModelError(f"{source}: {where} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    return obj


def _instantiate(source: str, obj: Any, name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    kwargs = kwargs or {}
    if isinstance(obj, nn.Module):
        if kwargs:
            raise InputError(f"{source}: {name!r} is a module instance: --model-arg needs a class "
                             "or a factory function to pass them to")
        return obj
    import inspect

    is_module_class = isinstance(obj, type) and issubclass(obj, nn.Module)
    is_factory = inspect.isfunction(obj) or inspect.ismethod(obj) or (
        hasattr(obj, "func") and inspect.isfunction(getattr(obj, "func", None)))  # partial
    if not (is_module_class or is_factory):
        what = ("a built-in function" if inspect.isbuiltin(obj) else
                "a class that is not an nn.Module" if isinstance(obj, type) else
                f"a {type(obj).__name__}")
        raise ModelError(f"{source}: {name!r} is {what}; a SOURCE names an nn.Module instance, "
                         "an nn.Module subclass or a Python function that builds one (nothing "
                         "else is called)")
    try:
        model = obj(**kwargs)
    except Exception as e:
        raise ModelError(f"{source}: calling {name}({kwargs_text(kwargs)}) failed: "
                         f"{_one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"{source}: {name}() returned a {type(model).__name__}, not an nn.Module")
    return model


class _PickleRefused:
    """Stand-in for the ``pickle`` module inside torch's .pt2 reader: arbitrary objects are
    refused."""

    @staticmethod
    def loads(*_a: Any, **_k: Any) -> Any:
        raise ModelError("the .pt2 file holds pickled Python objects; convcost loads only "
                         "tensors from .pt2 files")


@contextmanager
def tensors_only_unpickling() -> Iterator[None]:
    """While torch.export.load runs: every ``torch.load`` is forced to ``weights_only=True``
    (tensors and plain containers only) and plain ``pickle.loads`` of custom objects is refused.
    torch.export.load itself unpickles with ``weights_only=False``; convcost never does."""
    orig = torch.load

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return orig(*args, **kwargs)

    pkg = None
    try:
        from torch.export.pt2_archive import _package as pkg  # torch >= 2.7
    except ImportError:  # pragma: no cover - older torch
        pkg = None
    saved_pickle = getattr(pkg, "pickle", None)
    torch.load = safe_load
    if pkg is not None and saved_pickle is not None:
        pkg.pickle = _PickleRefused
    try:
        yield
    finally:
        torch.load = orig
        if pkg is not None and saved_pickle is not None:
            pkg.pickle = saved_pickle


def _load_export(source: str, shape: tuple[int, ...], memory_check: bool = True) -> Loaded:
    path = Path(source)
    _regular_file(source, path, ".pt2 archive")
    from convcost.memory import fmt_bytes, guard
    from convcost.sources.pt2_guard import check_archive

    stored = check_archive(path)  # before torch sees it: nothing in the archive may run as code
    guard(stored, f"the archive's tensors, {fmt_bytes(stored)}",
          what=f"{source} (loading its weights)", enabled=memory_check)
    import warnings

    try:
        with tensors_only_unpickling(), warnings.catch_warnings():
            # torch's own deprecation notices about its archive format are not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            ep = torch.export.load(str(path))
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from e
    except Exception as e:
        raise ModelError(f"{source}: not a loadable torch.export program: {_one_line(e)}") from e
    from convcost.sources.exported import example_shapes, rebuild

    notes: list[str] = []
    try:  # the original module tree, with real nn.Conv2d & co. where a leaf is one operator
        rebuilt = rebuild(ep)
        model, notes = rebuilt.model, rebuilt.notes
    except Exception as e:
        try:
            model = ep.module()
        except Exception as e2:
            raise ModelError(f"{source}: not a loadable torch.export program: "
                             f"{_one_line(e2)}") from e2
        notes.append(f"the program could not be unflattened into its modules ({_one_line(e)}); "
                     "counted as one graph: per-layer rows and substitution are not available")
    # an exported program has fixed example input shapes: take them from its signature
    shapes = example_shapes(ep) or [shape]
    return Loaded(source, path.stem, model, Example.plain(shapes), "export",
                  memory_check=memory_check, notes=notes)


def _one_line(e: BaseException) -> str:
    return first_line(e)
