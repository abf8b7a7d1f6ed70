"""Loading pretrained backbone weights from a local file or s3:// without unpickling arbitrary objects."""

from __future__ import annotations

import io
import re

from . import storage


class WeightsError(ValueError):
    pass


TRUST_FLAG = "--trust-pickle"


def load_state_dict_file(
    uri: str, storage_options: storage.S3Options | dict | None = None, *, trust_pickle: bool = False
) -> dict:
    """A state dict from .safetensors (preferred) or a torch file loaded with ``weights_only=True``.

    ``weights_only`` refuses pickled code, so a downloaded .pth cannot run anything on load. A file that needs
    full unpickling (a whole training checkpoint with Python objects in it) is refused with an error naming
    --trust-pickle; only ``trust_pickle=True`` (the user vouching for the file) unpickles it.
    """
    opts = storage.as_options(storage_options)
    try:
        data = storage.read_bytes(uri, opts)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {uri}") from None
    except Exception as e:
        raise WeightsError(f"could not read weights {uri}: {storage.redact(str(e))[:300]}") from None
    try:
        if uri.endswith(".safetensors"):
            from safetensors.torch import load

            state = load(data)
        else:
            state = _torch_load(data, uri, trust_pickle)
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"{uri} is not a readable state dict: {type(e).__name__}: {str(e)[:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise WeightsError(f"{uri} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _torch_load(data: bytes, uri: str, trust_pickle: bool):
    """Tensors-only unpickling; full unpickling (which can run any code in the file) only when trusted."""
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # not a pickle of Python objects at all (junk, truncated): trusting would not help
            raise
        if not trust_pickle:
            raise WeightsError(
                f"{uri} is not a readable state dict without unpickling Python objects ({found.group(1)}), and "
                f"unpickling can run any code. Convert it to .safetensors, or pass {TRUST_FLAG} if you trust "
                f"where the file came from"
            ) from None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
