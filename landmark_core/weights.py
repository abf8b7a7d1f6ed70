"""Loading pretrained backbone weights from a local file or s3:// without unpickling arbitrary objects."""

from __future__ import annotations

import io

from . import storage


class WeightsError(ValueError):
    pass


def load_state_dict_file(uri: str, storage_options: dict | None = None) -> dict:
    """A state dict from .safetensors (preferred) or a torch file loaded with ``weights_only=True``.

    ``weights_only`` refuses pickled code, so a downloaded .pth cannot run anything on load.
    """
    import torch

    opts = storage.S3Options(**(storage_options or {}))
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
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{uri} is not a readable state dict: {type(e).__name__}: {str(e)[:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise WeightsError(f"{uri} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
