"""A self-describing model artifact: a directory anyone can load without pickle.

    <dir>/model.safetensors   weights (head + backbone), plus optional abstention tensors (prototypes, ...)
    <dir>/artifact.json       architecture spec, catalog, preprocessing, calibration, abstention, metrics,
                              provenance, the weights' sha256, and model_id (derived from the content)

``model_id`` is a hash of the weights and of everything that changes a prediction (spec, catalog, preprocessing,
calibration, abstention), so the tag job can tell whether a photo was tagged by this very model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import storage
from .catalog import Catalog
from .modelspec import ModelSpec
from .preprocess import EvalPreset

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "artifact.json"
_EXTRA_PREFIX = "extra."


class ArtifactError(ValueError):
    pass


@dataclass
class Artifact:
    spec: ModelSpec
    catalog: Catalog
    preprocess: EvalPreset
    state_dict: dict  # name -> tensor (the LandmarkNet's weights)
    temperature: float = 1.0
    abstain: dict = field(default_factory=lambda: {"method": "msp", "threshold": 0.0})
    extra_tensors: dict = field(default_factory=dict)  # e.g. class prototypes for the abstention score
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    model_id: str = ""
    # landmark_core.recognizer.Recognizer.to_json(); empty = the head alone (artifacts from before the gallery)
    recognizer: dict = field(default_factory=dict)

    def meta(self, weights_sha256: str) -> dict:
        body = {
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_json(),
            "catalog": self.catalog.to_json(),
            "preprocess": self.preprocess.to_json(),
            "calibration": {"temperature": float(self.temperature)},
            "abstain": self.abstain,
            "weights_sha256": weights_sha256,
        }
        if self.recognizer:  # only when set: the model_id of an artifact without one stays what it was
            body["recognizer"] = self.recognizer
        return {**body, "model_id": content_id(body), "metrics": self.metrics, "provenance": self.provenance}


_ID_KEYS = ("format_version", "spec", "catalog", "preprocess", "calibration", "abstain", "weights_sha256")


def content_id(meta: dict) -> str:
    """The model_id: a hash of what changes a prediction, from the metadata as written (a JSON round trip keeps
    it: tuples become lists, floats keep their repr)."""
    body = {k: meta[k] for k in _ID_KEYS if k in meta}
    if meta.get("recognizer"):
        body["recognizer"] = meta["recognizer"]
    return "lm-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def save(artifact: Artifact, dest: str, *, storage_options: storage.S3Options | dict | None = None) -> str:
    """Write the artifact to a local directory or s3:// prefix; returns its model_id."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous() for k, v in artifact.state_dict.items()}
    for k, v in artifact.extra_tensors.items():
        tensors[_EXTRA_PREFIX + k] = v.detach().cpu().contiguous()
    blob = st_save(tensors, metadata={"format": "pt"})
    meta = artifact.meta(hashlib.sha256(blob).hexdigest())
    meta["provenance"] = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **artifact.provenance}
    artifact.model_id = meta["model_id"]
    text = json.dumps(meta, indent=2, sort_keys=False)
    opts = storage.as_options(storage_options)
    if storage.is_s3(dest):
        storage.write_bytes(storage.join(dest, WEIGHTS_FILE), blob, opts)
        storage.write_bytes(storage.join(dest, META_FILE), text.encode(), opts)  # meta last: marks it complete
    else:
        _save_local(Path(dest), blob, text)
    return artifact.model_id


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_local(dest: Path, blob: bytes, text: str) -> None:
    """Write into a temp dir beside ``dest`` and swap it in, so a crash never leaves half an artifact."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide the model from a server running as another user
    (tmp / WEIGHTS_FILE).write_bytes(blob)
    (tmp / META_FILE).write_text(text)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def load(src: str, *, storage_options: storage.S3Options | dict | None = None, tensors: str = "torch") -> Artifact:
    """Load an artifact; a missing, truncated or mismatched file gets an ArtifactError naming it.

    ``tensors="numpy"`` gives numpy arrays instead of torch tensors and never imports torch (the Predictor's
    ONNX runtimes and the tag job's actors use it: importing torch costs seconds per process).
    """
    if tensors == "torch":
        from safetensors.torch import load as st_load
    elif tensors == "numpy":
        from safetensors.numpy import load as st_load
    else:
        raise ValueError(f"tensors must be 'torch' or 'numpy', got {tensors!r}")

    opts = storage.as_options(storage_options)
    meta_uri, weights_uri = storage.join(src, META_FILE), storage.join(src, WEIGHTS_FILE)
    if not storage.is_s3(src) and not Path(src).is_dir():
        raise ArtifactError(
            f"model artifact not found: {src} is not a directory (train one with `landmark train ... --output DIR`)"
        )
    meta = _read_meta(meta_uri, opts)
    blob = _read(weights_uri, opts)
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise ArtifactError(f"{weights_uri}: sha256 does not match {META_FILE} (truncated or replaced file)")
    try:
        tensors = st_load(blob)
    except Exception as e:
        raise ArtifactError(f"{weights_uri}: not a readable safetensors file ({e})") from None
    try:
        art = Artifact(
            spec=ModelSpec.from_json(meta["spec"]),
            catalog=Catalog.from_json(meta["catalog"]),
            preprocess=EvalPreset.from_json(meta["preprocess"]),
            state_dict={k: v for k, v in tensors.items() if not k.startswith(_EXTRA_PREFIX)},
            temperature=float(meta["calibration"]["temperature"]),
            abstain=dict(meta["abstain"]),
            extra_tensors={k[len(_EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_EXTRA_PREFIX)},
            metrics=meta.get("metrics", {}),
            provenance=meta.get("provenance", {}),
            model_id=meta["model_id"],
            recognizer=dict(meta.get("recognizer") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{meta_uri}: malformed artifact metadata ({type(e).__name__}: {e})") from None
    _check_classes(art, meta_uri)
    # the id names caches (the ONNX models) and every tag row: one that is not the content's hash is refused
    if not isinstance(meta["model_id"], str) or meta["model_id"] != content_id(meta):
        raise ArtifactError(
            f"{meta_uri}: model_id {str(meta['model_id'])[:40]!r} is not the hash of the artifact's content "
            f"({content_id(meta)}): its metadata was changed after it was written"
        )
    return art


def _check_classes(art: Artifact, meta_uri: str) -> None:
    """The head names the first spec.num_classes landmarks; landmarks after them (enrolled by `landmark catalog
    add`) need a gallery recognizer and gallery photos."""
    n_head, n = art.spec.num_classes, len(art.catalog)
    if n == n_head:
        return
    if n < n_head or art.recognizer.get("mode", "head") == "head" or "gallery" not in art.extra_tensors:
        raise ArtifactError(f"{meta_uri}: model has {n_head} classes but the catalog {n}")


def _read(uri: str, opts) -> bytes:
    try:
        return storage.read_bytes(uri, opts)
    except FileNotFoundError:
        raise ArtifactError(f"missing artifact file: {uri}") from None
    except Exception as e:
        raise ArtifactError(f"could not read {uri}: {storage.redact(str(e))[:300]}") from None


def _read_meta(uri: str, opts) -> dict:
    try:
        meta = json.loads(_read(uri, opts))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{uri}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{uri}: unsupported artifact format (expected format_version {FORMAT_VERSION})")
    return meta


def build_network(art: Artifact):
    """The LandmarkNet with the artifact's weights (no pretrained download: the weights are all here)."""
    from .models import build_model

    spec = ModelSpec(**{**art.spec.to_json(), "weights": "none"})
    net = build_model(spec)
    try:
        net.load_state_dict(art.state_dict)
    except RuntimeError as e:
        raise ArtifactError(f"weights do not fit the {art.spec.name} architecture: {str(e)[:300]}") from None
    return net.eval()
