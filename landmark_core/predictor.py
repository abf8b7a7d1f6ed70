"""Predictor: a batch of decoded photos -> top-k landmark tags, calibrated scores, location, or "no landmark".

Built from an artifact; usable directly, in `landmark predict`, and unchanged as a Ray Data actor class
(``ds.map_batches(Predictor, fn_constructor_kwargs={"model": uri}, ...)``).

The network runs on one of landmark_core.onnx_runtime's runtimes: torch (default here: the scores equal training's
evaluation; the GPU path), or ONNX Runtime fp32 / int8 on a CPU (several times faster there; the commands default
to ``auto``, which picks them on a CPU). The ONNX runtimes never import torch once their model is built.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from . import abstention, members, openworld, recognizer
from .artifact import Artifact, build_network, load
from .onnx_runtime import ONNX_RUNTIMES, StaleFitWarning, check_runtime, resolve_runtime, stale_fit
from .preprocess import normalize_batch
from .status import NO_LANDMARK, TAGGED
from .storage import S3Options


def pick_device(device: str | None = None) -> str:
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Predictor:
    """``__call__(batch)`` takes {"image": (N, S, S, 3) uint8[, "ok": (N,) bool]} and adds prediction columns.

    Columns added: ``status`` (tagged | no_landmark; rows with ok=False keep "failed"), ``landmark`` (top-1 name
    or None), ``score`` (open-world artifacts: the probability that the top-1 tag is right, photos of no landmark
    included; else the top-1 probability among catalog landmarks), ``lat``/``lon`` (top-1 location, NaN when none),
    ``abstain_score`` (the open-set score), ``topk_idx``, ``topk_score`` (N, k).
    """

    def __init__(
        self,
        model: str | Artifact,
        *,
        k: int = 5,
        min_score: float | None = None,
        accept_rate: float | None = None,
        max_wrong_rate: float | None = None,
        device: str | None = None,
        threads: int | None = None,
        storage_options: S3Options | dict | None = None,
        runtime: str = "torch",
        onnx_model: bytes | None = None,
    ):
        """``min_score`` replaces the artifact's abstain threshold (on its abstention score); ``accept_rate``
        recomputes it from the known validation scores stored in the artifact; ``max_wrong_rate`` (open-world
        artifacts, trained with negatives) from the held-back negatives' scores.

        ``runtime``: torch | onnx | onnx-int8 | auto (see landmark_core.onnx_runtime). ``onnx_model``: the runtime's
        ONNX model when the caller has it already (the tag job builds it once in the driver); else it comes from
        the cache, or is built and cached. ``threads``: torch threads, or ONNX Runtime intra-op threads.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        check_runtime(runtime)
        if runtime in ONNX_RUNTIMES and device in (None, "auto"):
            device = "cpu"  # no torch import just to ask for a GPU the ONNX runtimes would not use
        self.device = pick_device(device)
        self.runtime = resolve_runtime(runtime, self.device)
        onnx = self.runtime in ONNX_RUNTIMES
        if threads and not onnx:
            import torch

            torch.set_num_threads(threads)
        self.artifact = (
            model
            if isinstance(model, Artifact)
            else load(model, storage_options=storage_options, tensors="numpy" if onnx else "torch")
        )
        art = self.artifact
        self.catalog, self.preset, self.model_id = art.catalog, art.preprocess, art.model_id
        self.k = min(k, len(self.catalog))
        self.temperature = art.temperature
        self.method = art.abstain.get("method", "msp")
        self.knn_k = int(art.abstain.get("k", 5))
        self.extra = {k_: np.asarray(v) for k_, v in art.extra_tensors.items()}
        # an open-world model fitted its score again on this runtime's own features (int8): use that fit
        self._fit = art.abstain.get("runtimes", {}).get(self.runtime, {})
        self._neg_key = f"@{self.runtime}" if self._fit else ""
        self.stale_fit = stale_fit(self._fit, self.runtime)  # fitted on an older build of this runtime's model
        if self.stale_fit:
            warnings.warn(self.stale_fit, StaleFitWarning, stacklevel=2)
        self.calibrator = self._fit.get("calibrator", art.abstain.get("calibrator"))
        self.members = members.from_artifact(art.abstain, self.extra, self.runtime)  # --members: pooled
        self.threshold = self._pooled_threshold(art, min_score, accept_rate, max_wrong_rate)
        self.recognizer = recognizer.Recognizer.from_json(art.recognizer)  # head | gallery | both
        self.net, self._onnx = self._network(onnx_model, threads)
        self._lat = np.array([np.nan if lm.lat is None else lm.lat for lm in self.catalog], dtype=np.float64)
        self._lon = np.array([np.nan if lm.lon is None else lm.lon for lm in self.catalog], dtype=np.float64)
        self._names = np.array(self.catalog.names, dtype=object)

    @classmethod
    def for_command(cls, prefix: str, *args, **kwargs) -> Predictor:
        """A Predictor for a command line: a stale runtime fit is one "{prefix} warning: --model: ..." line on
        stderr, in the command's words, instead of a Python warning with its source line."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StaleFitWarning)
            predictor = cls(*args, **kwargs)
        if predictor.stale_fit:
            print(f"{prefix} warning: --model: {predictor.stale_fit}", file=sys.stderr, flush=True)
        return predictor

    def _network(self, onnx_model: bytes | None, threads: int | None):
        """(torch network, None) or (None, ONNX Runtime session) for this Predictor's runtime and device."""
        if self.runtime in ONNX_RUNTIMES:
            from . import onnx_runtime as rt

            blob = onnx_model if onnx_model is not None else rt.model_bytes(self.artifact, self.runtime)
            return None, rt.OrtModel(blob, threads=threads)
        import torch

        net = build_network(self.artifact).to(self.device)
        if self.device.startswith("cuda"):
            net = net.to(memory_format=torch.channels_last)
        return net, None

    def threshold_at(self, *, accept_rate: float | None = None, max_wrong_rate: float | None = None) -> float:
        """The threshold this model would decide on at another rate (as given to the constructor), from the
        scores stored in its artifact: what `landmark eval` shows beside the one it runs."""
        return self._pooled_threshold(self.artifact, None, accept_rate, max_wrong_rate)

    def _pooled_threshold(
        self, art: Artifact, min_score: float | None, accept_rate: float | None, max_wrong_rate: float | None
    ) -> float:
        """The threshold the flags ask for; a pool (--members) recomputes each member's at the rate asked for and
        pools them as it pools the scores (a --min-score is on the pooled score already)."""
        threshold = self._threshold(art, min_score, accept_rate, max_wrong_rate)
        if not self.members or min_score is not None or (accept_rate is None and max_wrong_rate is None):
            return threshold
        rates = {"accept_rate": accept_rate, "max_wrong_rate": max_wrong_rate}
        own = [members.threshold(m, **rates) for m in self.members]
        return float(members.pool([threshold] + own))

    def _threshold(
        self, art: Artifact, min_score: float | None, accept_rate: float | None, max_wrong_rate: float | None
    ) -> float:
        if min_score is not None:
            abstention.check_min_score(self.method, float(min_score))
            return float(min_score)
        if max_wrong_rate is not None and "neg_fit_scores" not in self.extra:
            raise ValueError(
                "this model was trained without --negatives, so it has no held-back negatives to "
                "set a wrong-tag rate on; use min_score or accept_rate"
            )
        if max_wrong_rate is not None and "neg_fit_scores" + self._neg_key not in self.extra:
            raise ValueError(f"this artifact stores no held-back negatives' scores for its {self.runtime} fit")
        if accept_rate is not None and max_wrong_rate is None and "val_scores" not in self.extra:
            raise ValueError("this artifact stores no validation scores; use min_score instead of accept_rate")
        stored = {  # one rule for a threshold at a rate from stored scores, this model's as each member's
            "threshold": float(self._fit.get("threshold", art.abstain.get("threshold", float("-inf")))),
            "neg_fit_scores": self.extra.get("neg_fit_scores" + self._neg_key),
            "neg_fit_groups": self.extra.get("neg_fit_groups" + self._neg_key),
            "val_scores": self.extra.get("val_scores" + self._neg_key, self.extra.get("val_scores")),
        }
        return members.threshold(stored, accept_rate=accept_rate, max_wrong_rate=max_wrong_rate)

    def logits_and_embeddings(self, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._onnx is not None:
            return self._onnx(images_uint8)
        import torch

        p = self.preset
        with torch.inference_mode():
            x = normalize_batch(images_uint8, p.mean, p.std, device=self.device)
            if self.device.startswith("cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    emb = self.net.embed(x)
                    logits = self.net.head(emb)
            else:
                emb = self.net.embed(x)
                logits = self.net.head(emb)
            return logits.float().cpu().numpy(), emb.float().cpu().numpy()

    def open_world_scores(self, logits: np.ndarray, emb: np.ndarray, *, absent: int | None = None) -> np.ndarray:
        """An open-world model's P(top-1 right), pooled over its members. ``absent``: as if that landmark were not
        in the catalog (its head column and bank photos dropped), so that its own photos score as a look-alike of
        it would (`landmark eval`'s catalog look-alikes)."""
        if self.method != "openworld":
            raise ValueError(f"not an open-world model (abstain method {self.method!r}): trained without --negatives")
        lg, banks = (logits, self.extra) if absent is None else openworld.without(logits, self.extra, absent)
        x = openworld.features(lg, emb, temperature=self.temperature, extra=banks)
        ab = openworld.prob_right(x, self.calibrator)
        if self.members:
            ab = members.pool([ab] + [members.score(m, emb, absent=absent) for m in self.members])
        return ab

    def predict_arrays(self, images_uint8: np.ndarray, *, features: bool = False) -> dict[str, np.ndarray]:
        """The tag columns of a batch of decoded photos; ``features``: also the network's ``logits`` and
        ``embeddings`` they were made from (for a caller that scores the same photos again another way)."""
        n = len(images_uint8)
        if n == 0:
            return self._empty()
        logits, emb = self.logits_and_embeddings(images_uint8)
        probs = recognizer.probabilities(
            self.recognizer, logits, emb, temperature=self.temperature, extra=self.extra, n_classes=len(self.catalog)
        )
        top = np.argsort(-probs, axis=1)[:, : self.k]
        top_p = np.take_along_axis(probs, top, axis=1).astype(np.float32)
        if self.method == "openworld":
            ab = self.open_world_scores(logits, emb).astype(np.float32)
            top_p = openworld.tag_scores(top_p, ab)
        else:
            ab = abstention.known_score(
                self.method, logits, emb, temperature=self.temperature, extra=self.extra, k=self.knn_k
            ).astype(np.float32)
        accepted = ab >= self.threshold
        first = top[:, 0]
        out = {"logits": logits, "embeddings": emb} if features else {}
        return out | {
            "status": np.where(accepted, TAGGED, NO_LANDMARK).astype(object),
            "landmark": np.where(accepted, self._names[first], None).astype(object),
            "score": top_p[:, 0],
            "lat": np.where(accepted, self._lat[first], np.nan),
            "lon": np.where(accepted, self._lon[first], np.nan),
            "abstain_score": ab,
            "topk_idx": top.astype(np.int32),
            "topk_score": top_p,
        }

    def __call__(self, batch: dict, *, features: bool = False) -> dict:
        """The tag columns of a decoded batch, failed rows kept as they are. ``features``: also ``features``, the
        (logits, embeddings) of the batch's decoded rows in order (see predict_arrays), None if none decoded."""
        images = batch["image"]
        ok = np.asarray(batch.get("ok", np.ones(len(images), dtype=bool)), dtype=bool)
        out = {k: v for k, v in batch.items() if k != "image"}
        cols = self._empty(len(images))
        if features:  # never a column of the tag job's batches
            out["features"] = None
        if ok.any():
            if isinstance(images, np.ndarray) or not hasattr(images, "device"):
                images = np.asarray(images)[ok]
            else:  # a torch tensor, e.g. decoded on the GPU (--gpu-decode): selected where it is
                import torch

                images = images[torch.from_numpy(ok).to(images.device)]
            pred = self.predict_arrays(images, features=features)
            if features:
                out["features"] = (pred.pop("logits"), pred.pop("embeddings"))
            for name, col in pred.items():
                cols[name][ok] = col
        if "status" in batch:  # failed rows keep their status
            cols["status"] = np.where(ok, cols["status"], np.asarray(batch["status"], dtype=object))
        out.update(cols)
        return out

    def _empty(self, n: int = 0) -> dict[str, np.ndarray]:
        return {
            "status": np.full(n, "failed", dtype=object),
            "landmark": np.full(n, None, dtype=object),
            "score": np.full(n, np.nan, dtype=np.float32),
            "lat": np.full(n, np.nan),
            "lon": np.full(n, np.nan),
            "abstain_score": np.full(n, np.nan, dtype=np.float32),
            "topk_idx": np.full((n, self.k), -1, dtype=np.int32),
            "topk_score": np.full((n, self.k), np.nan, dtype=np.float32),
        }

    def tags(self, topk_idx: np.ndarray, topk_score: np.ndarray) -> list[dict]:
        """One row's top-k as [{name, score, lat, lon}], best first."""
        out = []
        for i, s in zip(topk_idx, topk_score):
            if i < 0:
                continue
            lm = self.catalog[int(i)]
            out.append({"name": lm.name, "score": float(s), "lat": lm.lat, "lon": lm.lon})
        return out


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))
