"""The Ray Train worker loop: one DDP process, its shard of the data, a checkpoint per epoch."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from jobs.train import HEAD_LR, TrainConfig
from landmark_core.models import ModelSpec, build_model
from landmark_core.preprocess import presets_for
from landmark_core.training import (
    TrainState,
    UriImageDataset,
    cache_side_for,
    cached_features,
    draw_negatives,
    eval_arrays,
    every,
    forward_uint8,
    load_checkpoint_dir,
    make_optimizer,
    network_runner,
    param_groups,
    save_checkpoint_dir,
    smoothed_ce,
    warmup_cosine,
)

NEGATIVE = -1  # the label of a photo of no catalog landmark in a training batch (-100 marks a bad photo)


class Worker:
    """One Ray Train worker. ``loop_cfg``: {"cfg": the frozen TrainConfig, "n_classes", and the (uris, labels)
    of "train", "val", "test", plus "unknown" uris, "neg_train" uris and "neg_fit" (uris, group indices)}."""

    def __init__(self, loop_cfg: dict):
        import ray.train
        import ray.train.torch

        self.c: TrainConfig = loop_cfg["cfg"]
        self.loop_cfg = loop_cfg
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.cuda = self.device.type == "cuda"
        torch.set_num_threads(max(1, int(self.c.cpus_per_worker)))
        torch.manual_seed(self.c.seed + self.rank)
        self.opts = self.c.s3_options()
        self.train_preset, self.eval_preset = presets_for(self.c.effective_image_size, self.c.crop_fraction)
        self.val_emb = None  # a frozen backbone's validation embeddings, computed at the first validation
        self.spec = ModelSpec(self.c.model, loop_cfg["n_classes"], dropout=self.c.dropout, weights=self.c.weights)
        self.net = build_model(self.spec, storage_options=self.opts, trust_pickle=self.c.trust_pickle).to(self.device)
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.loss_fn = smoothed_ce(self.c.label_smoothing)
        self.state = TrainState(history=[])
        self.resumed_rng: list | None = None  # each rank's random state at the checkpoint resumed from
        # mixed precision only where the backbone runs in the epochs (fine-tuning on a GPU); its loss scale is
        # checkpointed with the optimiser
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and not self.c.freeze_backbone)

    # -------------------------------------------------------------- sharding

    def shard(self, pair):
        """Evaluation shards: every photo exactly once across the workers."""
        uris, labels = pair
        return uris[self.rank :: self.world], labels[self.rank :: self.world]

    def train_shard(self):
        """Training shards of equal length (padded by wrapping round, as DistributedSampler does): every
        worker then takes the same number of steps, which DDP's collective ops require."""
        return self._equal_shard(*self.loop_cfg["train"])

    def negatives_shard(self):
        """This worker's training negatives (label NEGATIVE), equal length on every worker like train_shard."""
        uris = self.loop_cfg.get("neg_train") or []
        return self._equal_shard(uris, [NEGATIVE] * len(uris))

    def _equal_shard(self, uris, labels):
        if not uris:
            return [], []
        per = -(-len(uris) // self.world)
        idx = [i % len(uris) for i in range(per * self.world)][self.rank :: self.world]
        return [uris[i] for i in idx], [labels[i] for i in idx]

    # -------------------------------------------------------------- distributed sums

    def all_sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    # -------------------------------------------------------------- main flow

    def run(self):
        import ray.train

        c = self.c
        frozen = c.freeze_backbone
        trainable = self.net.head if frozen else self.net
        if frozen:
            self.net.freeze_backbone()
        epochs = c.epochs
        steps_per_epoch = self._steps_per_epoch()
        lr = c.effective_lr
        self.optimizer = make_optimizer(c.optimizer, param_groups(self.net, lr, c.backbone_lr_mult), lr, c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(epochs * steps_per_epoch, int(c.warmup_epochs * steps_per_epoch))
        )
        self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self._restore(ray.train.get_checkpoint())
        if not frozen and c.model != "scratch" and self.state.epoch == 0 and c.probe_epochs > 0:
            self._linear_probe()
        self.ddp = self._wrap(trainable)  # after the probe: one DDP wrapper per parameter set at a time
        val_uris, val_labels = self.shard(self.loop_cfg["val"])
        self.val_images = eval_arrays(val_uris, self.opts, self.eval_preset)
        self.val_labels = np.asarray(val_labels, dtype=np.int64)
        if frozen:
            self._cache_frozen_features()
            train_epoch = self._frozen_epoch
        else:
            self.train_ds = self._train_dataset(self.train_preset.transform(), negatives=self._uses_outliers())
            train_epoch = self._finetune_epoch
        self._continue_random_state()  # after the feature cache, which draws as it did in the first attempt
        while self.state.epoch < epochs and not self.state.stopped_early:
            t0 = time.time()
            loss, correct, seen, bad = train_epoch(self.state.epoch)
            elapsed = time.time() - t0
            self._check_bad(bad, seen + bad)
            loss, correct, seen = self.all_sum(loss, correct, seen)
            val_loss, val_acc = self._validate()
            self._end_epoch(loss / max(seen, 1), correct / max(seen, 1), val_loss, val_acc, seen / elapsed)
        self._final_eval()

    def _wrap(self, module):
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[self.device.index] if self.cuda else None)

    def _steps_per_epoch(self) -> int:
        n = len(self.train_shard()[0])
        if self._uses_outliers():
            n += min(n, len(self.negatives_shard()[0]))
        return max(1, -(-n // self.c.batch_size))

    # -------------------------------------------------------------- epochs

    def _train_dataset(self, transform, *, negatives: bool = False) -> UriImageDataset:
        uris, labels = self.train_shard()
        if negatives:
            neg_uris, neg_labels = self.negatives_shard()
            uris, labels = uris + neg_uris, labels + neg_labels
        return UriImageDataset(
            uris,
            labels,
            transform,
            opts=self.opts,
            draft_to=self.eval_preset.resize,
            cache_side=cache_side_for(self.c.effective_image_size),
            cache_mb=self.c.cache_mb,
        )

    def _uses_outliers(self) -> bool:
        return bool(self.loop_cfg.get("neg_train")) and self.c.outlier_weight > 0

    def _epoch_order(self, ds: UriImageDataset, e: int) -> list[int]:
        """Every known photo once, plus as many negatives as known photos, drawn anew each epoch (seeded; each
        negatives folder alike with --negatives-sampling balanced)."""
        g = self._epoch_rng(e)
        n_known = len(self.train_shard()[0])
        order = torch.arange(n_known)
        if len(ds) > n_known:
            picks = draw_negatives(ds.uris[n_known:], n_known, g, sampling=self.c.negatives_sampling)
            order = torch.cat([order, picks + n_known])
        return order[torch.randperm(len(order), generator=g)].tolist()

    def _loss(self, logits, y):
        """Cross-entropy on known photos; with negatives, outlier exposure (Hendrycks et al., 2019): the
        cross-entropy of their softmax to the uniform distribution, so photos of no landmark get flat scores."""
        known = y >= 0
        loss = self.loss_fn(logits[known], y[known]) if known.any() else logits.sum() * 0.0
        neg = y == NEGATIVE
        if neg.any():
            loss = loss + self.c.outlier_weight * -torch.log_softmax(logits[neg].float(), dim=1).mean()
        return loss

    def _cache_frozen_features(self) -> None:
        """The backbone's features of the training shard (and its negatives, for outlier exposure), once: the
        frozen epochs train the head on them."""
        ds = self.frozen_ds = self._train_dataset(None, negatives=self._uses_outliers())
        t0 = time.time()
        feats = cached_features(
            self.net,
            ds,
            self.device,
            views=self.c.feature_views,
            eval_preset=self.eval_preset,
            train_preset=self.train_preset,
            amp=self.cuda,
            progress=self._progress("frozen-backbone features", t0),
        )
        self.feat_labels = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64))
        self.feat_labels[list(ds.bad)] = -100
        if self.rank == 0:
            print(
                f"[train] cached frozen-backbone features: {feats.shape[0]} view(s) x {feats.shape[1]} photos "
                f"per worker in {time.time() - t0:.1f}s",
                flush=True,
            )
        self.feats = torch.from_numpy(feats)

    def _progress(self, what: str, t0: float):
        """Rank 0 says how far a long pass has come, every 30 s: minutes of silence look like a hang."""
        if self.rank != 0:
            return None

        def report(done: int, total: int) -> None:
            if done < total:
                print(f"[train] {what}: {done}/{total} photo-views per worker ({time.time() - t0:.0f}s)", flush=True)

        return every(30.0, report)

    def _frozen_epoch(self, e: int):
        """One epoch of the head on view ``e`` of the cached features (known photos, plus as many negatives as
        fine-tuning draws); returns (loss sum, correct, seen, bad)."""
        self.net.head.train()
        labels, bs = self.feat_labels, self.c.batch_size
        order = torch.as_tensor(self._epoch_order(self.frozen_ds, e), dtype=torch.long)
        view = self.feats[e % self.feats.shape[0]]
        total, correct, seen, bad = 0.0, 0, 0, 0
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            x, y = view[idx].to(self.device), labels[idx].to(self.device)
            logits = self.ddp(self.net.dropout(x))
            loss = self._loss(logits, y)
            self._step(loss)
            total, correct, seen, bad = self._tally(total, correct, seen, bad, loss, logits, y)
        return total, correct, seen, bad

    def _finetune_epoch(self, e: int):
        """One epoch of the whole network on augmented photos; returns (loss sum, correct, seen, bad)."""
        ds, bs = self.train_ds, self.c.batch_size
        workers = self.c.loader_workers
        if workers is None:
            workers = 4 if self.cuda else 0
        self.net.train()
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=bs,
            sampler=self._epoch_order(ds, e),
            num_workers=workers,
            pin_memory=self.cuda,
            persistent_workers=False,
            drop_last=len(ds) > bs,
        )
        total, correct, seen, bad = 0.0, 0, 0, 0
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
                logits = self.ddp(x)
                loss = self._loss(logits, y)
            self._step(loss)
            total, correct, seen, bad = self._tally(total, correct, seen, bad, loss, logits, y)
        return total, correct, seen, bad

    def _linear_probe(self) -> None:
        """LP-FT (Kumar et al., 2022): fit the new head on frozen features before fine-tuning everything, so the
        pretrained backbone is not distorted by gradients from a random head. One backbone pass, then a few
        cheap epochs on cached features with their own optimiser."""
        ds = self._train_dataset(None)
        feats = cached_features(
            self.net,
            ds,
            self.device,
            views=1,
            eval_preset=self.eval_preset,
            train_preset=self.train_preset,
            amp=self.cuda,
            progress=self._progress("linear-probe features", time.time()),
        )[0]
        labels = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64))
        labels[list(ds.bad)] = -100
        x_all = torch.from_numpy(feats)
        head = self.net.head
        opt = torch.optim.AdamW(self.net.head.parameters(), lr=HEAD_LR, weight_decay=self.c.weight_decay)
        bs, g = self.c.batch_size, torch.Generator().manual_seed(self.c.seed + self.rank)
        for _ in range(self.c.probe_epochs):
            order = torch.randperm(len(labels), generator=g)
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                loss = self.loss_fn(head(self.net.dropout(x_all[idx].to(self.device))), labels[idx].to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self._average_grads(head)  # by hand: no second DDP wrapper around the head
                opt.step()
        self.net.train()
        if self.rank == 0:
            print(
                f"[train] linear probe: head fitted on frozen features for {self.c.probe_epochs} epochs "
                f"before fine-tuning",
                flush=True,
            )

    def _average_grads(self, module) -> None:
        if self.world > 1:
            for p in module.parameters():
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def _check_bad(self, bad: int, n: int) -> None:
        """A few bad photos are skipped; a dataset that is mostly unreadable is an error, not a silent run."""
        bad, n = self.all_sum(float(bad), float(n))
        if n and bad / n > 0.2:
            raise RuntimeError(
                f"{int(bad)} of {int(n)} training photos could not be read or decoded "
                f"(see the warnings above); check --data and --s3-endpoint"
            )

    def _step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()

    def _epoch_rng(self, epoch: int) -> torch.Generator:
        """The shuffle of ``epoch`` on this rank: reproducible, and the same again after a restart."""
        return torch.Generator().manual_seed(self.c.seed * 1000 + epoch * 10 + self.rank)

    @staticmethod
    def _tally(total, correct, seen, bad, loss, logits, y):
        """Running sums of one epoch over known photos; photos that failed to decode carry label -100 and count
        as bad; negatives (label NEGATIVE) count in neither."""
        valid = y >= 0
        n = int(valid.sum())
        return (
            total + float(loss.detach()) * n,
            correct + int((logits.argmax(1)[valid] == y[valid]).sum()),
            seen + n,
            bad + int((y == -100).sum()),
        )

    def _validate(self) -> tuple[float, float]:
        images, ok = self.val_images
        if self.c.freeze_backbone:  # the backbone never changes: its embeddings once, the head each epoch
            logits = self._frozen_val_logits(images[ok])
        else:
            logits, _ = forward_uint8(self.net, images[ok], self.eval_preset, self.device, amp=self.cuda)
        y = torch.as_tensor(self.val_labels[ok])
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), y, reduction="sum")) if len(y) else 0.0
        correct = float((logits.argmax(1) == y.numpy()).sum()) if len(y) else 0.0
        loss, correct, n = self.all_sum(loss, correct, float(len(y)))
        return (loss / n, correct / n) if n else (float("nan"), float("nan"))

    def _frozen_val_logits(self, images: np.ndarray) -> np.ndarray:
        """What forward_uint8 gives for the validation photos, with their frozen embeddings computed once."""
        if self.val_emb is None:
            run = network_runner(self.net, self.eval_preset, self.device, amp=self.cuda)
            self.val_emb = torch.from_numpy(run(images)[1]).to(self.device)
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            logits = self.net.head(self.val_emb).float().cpu().numpy()
        self.net.train(was_training)
        return logits

    def _end_epoch(self, loss, acc, val_loss, val_acc, ips):
        st = self.state
        st.epoch += 1
        st.history.append(
            {
                "epoch": st.epoch,
                "train_loss": loss,
                "train_acc": acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "images_per_second": ips,
                "lr": self.scheduler.get_last_lr()[0],
            }
        )
        improved = not np.isfinite(val_loss) or val_loss < st.best_val_loss - 1e-4
        if improved:
            st.best_val_loss, st.best_epoch, st.bad_epochs = val_loss, st.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        else:
            st.bad_epochs += 1
            st.stopped_early = st.bad_epochs >= self.c.patience
        if self.rank == 0:
            print(
                f"[train] epoch {st.epoch}/{self.c.epochs}  loss {loss:.4f}  acc {acc:.3f}  "
                f"val_loss {val_loss:.4f}  val_acc {val_acc:.3f}  {ips:.1f} img/s"
                + ("  (early stop)" if st.stopped_early else ""),
                flush=True,
            )
        metrics = {k: v for k, v in st.history[-1].items()}
        self._report(metrics, final=False, rng_states=self._rng_states())

    def _report(self, metrics: dict, *, final: bool, extra_files: dict | None = None, rng_states=None):
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                d = Path(tmp)
                save_checkpoint_dir(
                    d,
                    net_state=self.net.state_dict(),
                    best_state=self.best_state,
                    optim_state=None if final else self.optimizer.state_dict(),
                    sched_state=None if final else self.scheduler.state_dict(),
                    scaler_state=None if final else self.scaler.state_dict(),
                    state=self.state,
                    rng_states=rng_states,
                )
                for name, blob in (extra_files or {}).items():
                    (d / name).write_bytes(blob)
                ckpt = Checkpoint.from_directory(tmp)
            ray.train.report({**metrics, "final": final}, checkpoint=ckpt)

    def _rng_states(self) -> list[torch.Tensor]:
        """Every rank's random state (torch's CPU generator, then CUDA's on a GPU) as uint8 tensors, gathered
        from all ranks (a collective: every rank calls it) for rank 0's checkpoint."""
        mine = torch.get_rng_state()
        if self.cuda:
            mine = torch.cat([mine, torch.cuda.get_rng_state(self.device)])
        if self.world == 1:
            return [mine]
        everyone = [torch.empty_like(mine, device=self.device) for _ in range(self.world)]
        dist.all_gather(everyone, mine.to(self.device))
        return [t.cpu() for t in everyone]

    def _continue_random_state(self) -> None:
        """A resumed run draws on where its checkpoint left off: the augmentations and dropout masks of the
        epochs after it are those of the uninterrupted run, so a killed worker or driver changes no weight."""
        states = self.resumed_rng
        if not states:
            return  # a fresh run, or a checkpoint from before random states were kept
        if len(states) != self.world:
            if self.rank == 0:
                print(
                    f"[train] the checkpoint's random state is of {len(states)} worker(s), this run has "
                    f"{self.world}: the resumed epochs draw afresh",
                    flush=True,
                )
            return
        mine, n = states[self.rank], torch.get_rng_state().numel()
        torch.set_rng_state(mine[:n])
        if self.cuda and mine.numel() > n:  # (saved on a GPU; a GPU run resumed on CPUs keeps the CPU part)
            torch.cuda.set_rng_state(mine[n:], self.device)

    def _restore(self, ckpt) -> None:
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            net_state, best_state, optim, state = load_checkpoint_dir(Path(d))
        self.net.load_state_dict(net_state)
        self.best_state = best_state
        if optim is not None:
            self.optimizer.load_state_dict(optim["optimizer"])
            self.scheduler.load_state_dict(optim["scheduler"])
            if optim.get("scaler") and self.scaler.is_enabled():  # empty when saved by a disabled scaler
                self.scaler.load_state_dict(optim["scaler"])
            self.resumed_rng = optim.get("rng") or None
        self.state = state
        self.state.resumed_after = (state.resumed_after or []) + [state.epoch]
        if self.rank == 0:
            print(f"[train] resumed from checkpoint after epoch {state.epoch}", flush=True)

    # -------------------------------------------------------------- end of training

    def _final_eval(self):
        """Best weights; logits/embeddings of every split gathered to rank 0 for calibration and metrics."""
        from landmark_core.training import to_bytes_npz

        self.net.load_state_dict(self.best_state)
        run = network_runner(self.net, self.eval_preset, self.device, amp=self.cuda)
        arrays = {}
        for split in ("val", "test", "train"):
            uris, labels = self.shard(self.loop_cfg[split])
            self._eval_into(arrays, run, split, uris, labels)
        unknown = self.loop_cfg["unknown"][self.rank :: self.world]
        self._eval_into(arrays, run, "unknown", unknown, [-1] * len(unknown))
        neg_train = (self.loop_cfg.get("neg_train") or [])[self.rank :: self.world]
        self._eval_into(arrays, run, "negtrain", neg_train, [-1] * len(neg_train))
        fit_uris, fit_groups = self.loop_cfg.get("neg_fit") or ([], [])
        self._eval_into(arrays, run, "negfit", fit_uris[self.rank :: self.world], fit_groups[self.rank :: self.world])
        gathered = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(gathered, arrays)
        else:
            gathered = [arrays]
        merged = {k: np.concatenate([g[k] for g in gathered]) for k in arrays}
        self._report(
            {"epoch": self.state.epoch},
            final=True,
            extra_files={"eval.npz": to_bytes_npz(**merged), "history.json": json.dumps(self.state.history).encode()},
        )

    def _eval_into(self, arrays: dict, run, split: str, uris: list, labels: list) -> None:
        images, ok = eval_arrays(uris, self.opts, self.eval_preset)
        logits, emb = run(images[ok])
        arrays[f"{split}_logits"] = logits.astype(np.float32)
        arrays[f"{split}_emb"] = emb.astype(np.float16 if split in ("train", "negtrain") else np.float32)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)[ok]


def train_loop(loop_cfg: dict) -> None:
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per epoch is ours; no per-report INFO
    # Ray 2.60 logs each report ("Reporting training result N: TrainingReport(...)") on a logger named by its
    # file's path, which the "ray.train" level does not reach.
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray layout: its lines are noise, not an error
        pass
    Worker(loop_cfg).run()
