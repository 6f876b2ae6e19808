"""torch ``state_dict`` <-> Flax NNX state, by a short table of explicit rules.

The Flax models mirror the seeds' attribute names, so a torch key maps to an
NNX path name for name, with three rules and no per-model cases:

====================  ==========================  ===============================
torch                 NNX                         value
====================  ==========================  ===============================
``<name>.weight``     ``<name>/kernel`` (4-D)     Conv OIHW -> HWIO: ``transpose(2, 3, 1, 0)``
``<name>.weight``     ``<name>/kernel`` (2-D)     Linear [out, in] -> [in, out]: ``transpose(1, 0)``
``<name>.bias``       ``<name>/bias``             as is
``<seq>.<i>.``        ``<seq>/layers/<i>/``       ``nn.Sequential`` child -> ``nnx.Sequential``
====================  ==========================  ===============================

No Linear rows are permuted: the Flax models flatten NHWC maps in PyTorch's
C,H,W order (``jaxcnn.models.layers.flatten_chw``). Loading is strict: the key
set and every shape are checked against a freshly built model, and all
mismatches are reported together by torch key and expected shape.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import models, report
from jaxcnn.errors import UserError, first_line

# The per-layer value rules, keyed by the tensor's rank: torch layout -> Flax layout.
TO_FLAX_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}  # Conv OIHW->HWIO, Linear [out,in]->[in,out]
TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}  # the inverses
NAME_RULES = {"weight": "kernel", "bias": "bias"}
# Wrappers people commonly save a state_dict under (torch.save({"state_dict": ...})).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the requested model."""


def torch_key_to_path(key: str) -> tuple[str | int, ...]:
    """``'conv1.0.weight'`` -> ``('conv1', 'layers', 0, 'kernel')``."""
    *modules, leaf = key.split(".")
    path: list[str | int] = []
    for part in modules:
        if part.isdigit():
            path += ["layers", int(part)]
        else:
            path.append(part)
    if leaf not in NAME_RULES:
        raise CheckpointError(
            f"torch key '{key}' is not a weight or bias; jaxcnn has no rule for it"
        )
    return (*path, NAME_RULES[leaf])


def path_to_torch_key(path: tuple[str | int, ...]) -> str:
    """``('conv1', 'layers', 0, 'kernel')`` -> ``'conv1.0.weight'`` (inverse of the above)."""
    parts: list[str] = []
    for i, part in enumerate(path[:-1]):
        if part == "layers" and i + 1 < len(path) and isinstance(path[i + 1], int):
            continue
        parts.append(str(part))
    inverse = {v: k for k, v in NAME_RULES.items()}
    return ".".join([*parts, inverse[path[-1]]])


def to_flax_value(value: np.ndarray) -> np.ndarray:
    """A torch-layout array in Flax layout (conv and linear weights transposed)."""
    axes = TO_FLAX_AXES.get(value.ndim)
    return np.transpose(value, axes) if axes else value


def to_torch_value(value: np.ndarray) -> np.ndarray:
    """A Flax-layout array in torch layout."""
    axes = TO_TORCH_AXES.get(value.ndim)
    return np.transpose(value, axes) if axes else value


def expected_torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Torch key -> torch shape, for every parameter of ``model``, in model order."""
    params = nnx.state(model, nnx.Param)
    return {
        path_to_torch_key(path): to_torch_value(np.empty(var.get_value().shape)).shape
        for path, var in nnx.to_flat_state(params)
    }


def _to_numpy(value: Any) -> np.ndarray:
    """An owned numpy copy: ``tensor.numpy()`` and ``jnp.asarray`` may both alias
    memory on CPU, and a later in-place torch update would then rewrite the
    "loaded" Flax weights behind the user's back. Floating tensors numpy cannot
    hold (bfloat16) arrive as float32."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        if value.is_floating_point() and str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy().copy()
    return np.array(value, copy=True)


def _torch_dtype(value: Any) -> str:
    """The dtype name as torch says it (``bfloat16``, ``int64``, ...)."""
    dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
    return str(dtype).removeprefix("torch.")


def checked_values(state_dict: Mapping[str, Any], keys) -> dict[str, np.ndarray]:
    """The ``keys`` of ``state_dict`` as float32 arrays, once every one is a finite float.

    float16, bfloat16 and float64 tensors are converted, and said once; integer,
    bool or complex tensors and tensors holding NaN or inf are refused by key.
    """
    values, converted, not_float, not_finite = {}, {}, [], []
    for key in keys:
        value = _to_numpy(state_dict[key])
        dtype = _torch_dtype(state_dict[key])
        if not np.issubdtype(value.dtype, np.floating):
            not_float.append(f"{key} ({dtype})")
            continue
        if dtype != "float32":  # bfloat16 arrives from _to_numpy as float32 already
            converted[dtype] = converted.get(dtype, 0) + 1
            value = value.astype(np.float32)
        if not np.all(np.isfinite(value)):
            not_finite.append(key)
        values[key] = value
    if not_float:
        raise CheckpointError("checkpoint tensors that are not floats: " + ", ".join(not_float))
    if not_finite:
        raise CheckpointError("checkpoint tensors holding NaN or inf: " + ", ".join(not_finite))
    if converted:
        counts = ", ".join(f"{n} {dtype}" for dtype, n in converted.items())
        report.log(f"warning: converted the checkpoint's {counts} tensors to float32")
    return values


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
    """The state_dict inside what torch.load returned, or a CheckpointError."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap(obj[key], source)
        if all(isinstance(k, str) for k in obj):
            keys = list(obj)
            if keys and all(k.startswith("module.") for k in keys):  # saved from DataParallel
                return {k[len("module.") :]: v for k, v in obj.items()}
            return obj
    raise CheckpointError(
        f"{source} holds a {type(obj).__name__}, not a state_dict (a mapping from names to tensors)"
    )


# torch.save's legacy format opens with a pickled magic number (0x1950a86a20f9469cfc6c).
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def is_torch_save_file(path: Path) -> bool:
    """Whether ``path`` is in one of ``torch.save``'s formats (a zip, or the legacy
    pickle stream): so random bytes are not mistaken for a pickled model."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as fh:
        return fh.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC


def read_state_dict(path: str | Path) -> Mapping[str, Any]:
    """Read a ``.pt``/``.pth`` (weights only, never unpickling code) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"'{path}' is not a readable safetensors file ({err})") from None
    import torch

    if not is_torch_save_file(path):
        raise CheckpointError(
            f"'{path}' is not a PyTorch checkpoint (neither torch.save's zip format nor its "
            "legacy pickle format)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refusing to load '{path}': it holds pickled Python objects besides tensors "
            "(e.g. a whole model saved with torch.save(model)), and loading those can run "
            "arbitrary code; save model.state_dict() instead"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint ({first_line(err)})"
        ) from None
    return _unwrap(obj, f"'{path}'")


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, Any]) -> nnx.Module:
    """Copy a torch ``state_dict`` into ``model`` in place, strictly, and return it.

    Raises:
        CheckpointError: listing every missing key, unexpected key and shape
            mismatch by torch key name and expected torch shape.
    """
    name = getattr(model, "model_name", None) or type(model).__name__
    expected = expected_torch_shapes(model)
    shapes = {k: tuple(getattr(v, "shape", np.shape(v))) for k, v in state_dict.items()}
    missing = [f"{k} {list(s)}" for k, s in expected.items() if k not in shapes]
    unexpected = [f"{k} {list(shapes[k])}" for k in shapes if k not in expected]
    wrong = [
        f"{k}: got {list(shapes[k])}, expected {list(s)}"
        for k, s in expected.items()
        if k in shapes and shapes[k] != tuple(s)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if wrong:
        problems.append("shape mismatches: " + "; ".join(wrong))
    if problems:
        raise CheckpointError(f"checkpoint does not fit model '{name}': " + " | ".join(problems))

    given = checked_values(state_dict, expected)
    params = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        value = to_flax_value(given[path_to_torch_key(path)])
        var.set_value(jnp.array(value, dtype=var.get_value().dtype, copy=True))
    nnx.update(model, params)
    return model


def load_torch_checkpoint(source: str | Path | Mapping[str, Any], model_name: str) -> nnx.Module:
    """A jaxcnn model holding the weights of a PyTorch checkpoint, in inference mode.

    Args:
        source: a path to a ``.pt``/``.pth``/``.safetensors`` file, or a state_dict.
        model_name: a registry name (``jaxcnn.models.MODELS``).

    Returns:
        The NNX model in eval mode; call it on NHWC float32 input.
    """
    model = models.create(model_name)
    state_dict = source if isinstance(source, Mapping) else read_state_dict(source)
    load_torch_state_dict(model, state_dict)
    model.eval()
    return model


def load_torch_params(source: str | Path | Mapping[str, Any], model_name: str) -> nnx.State:
    """The ``nnx.Param`` state of a PyTorch checkpoint, for ``train.create_program(config,
    init)`` (``--init-from``, ``evaluate.py``): the same values and checks as
    :func:`load_torch_checkpoint`, but the model is only traced (``nnx.eval_shape``).

    A run that starts from a checkpoint has no use for the model's own init, and
    drawing it (~70 small random programs) took 0.22 s of inception's first load in a
    fresh process, against 0.07 traced (2-core AMD EPYC, jax 0.10.2).
    """
    model = nnx.eval_shape(lambda: models.create(model_name))
    state_dict = source if isinstance(source, Mapping) else read_state_dict(source)
    return nnx.state(load_torch_state_dict(model, state_dict), nnx.Param)


def to_numpy_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters as a torch-layout ``{torch key: numpy array}`` dict."""
    return state_to_torch_layout(nnx.state(model, nnx.Param))


def state_to_torch_layout(params: nnx.State) -> dict[str, np.ndarray]:
    """Any parameter-shaped NNX state (params, grads, updates) in torch names and layout."""
    return {
        path_to_torch_key(path): np.ascontiguousarray(to_torch_value(np.asarray(var.get_value())))
        for path, var in nnx.to_flat_state(params)
    }


def to_torch_state_dict(model: nnx.Module) -> dict[str, Any]:
    """The model's parameters as a torch ``state_dict`` that the seeds' modules load."""
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in to_numpy_state_dict(model).items()}
