"""Model artifacts: a directory of safetensors + JSON that round-trips exactly, has a content-derived model_id,
holds no pickle, and fails loudly (ArtifactError naming the file) when anything is missing or damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from landmark_core import artifact as A
from landmark_core.artifact import ArtifactError, build_network
from landmark_core.catalog import Catalog
from landmark_core.models import ModelSpec
from landmark_core.preprocess import EvalPreset

torch.set_num_threads(2)


@pytest.fixture
def art(make_tiny_artifact):
    protos = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    return make_tiny_artifact(
        temperature=1.5, abstain={"method": "msp", "threshold": 0.3}, extra_tensors={"prototypes": protos}
    )


@pytest.fixture
def saved(art, tmp_path) -> Path:
    dest = tmp_path / "model"
    A.save(art, str(dest))
    return dest


def _edit_meta(d: Path, fn) -> None:
    meta = json.loads((d / A.META_FILE).read_text())
    fn(meta)
    (d / A.META_FILE).write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip(art, saved):
    assert sorted(p.name for p in saved.iterdir()) == ["artifact.json", "model.safetensors"]
    back = A.load(str(saved))
    assert back.spec == art.spec == ModelSpec("scratch", 3, weights="none")
    assert back.catalog == art.catalog and back.catalog.name == "tiny-3"
    assert [(lm.lat, lm.lon, lm.country) for lm in back.catalog] == [(lm.lat, lm.lon, lm.country) for lm in art.catalog]
    assert back.preprocess == art.preprocess == EvalPreset()
    assert back.temperature == 1.5
    assert back.abstain == {"method": "msp", "threshold": 0.3}
    assert back.metrics == {"test_top1": 0.0}
    assert back.provenance["made_by"] == "tests/conftest.py" and "created_at" in back.provenance
    assert back.model_id == art.model_id and back.model_id.startswith("lm-") and len(back.model_id) == 19
    assert set(back.state_dict) == set(art.state_dict)
    for k, v in art.state_dict.items():
        assert back.state_dict[k].dtype == v.dtype and torch.equal(back.state_dict[k], v), k
    assert set(back.extra_tensors) == {"prototypes"}
    assert torch.equal(back.extra_tensors["prototypes"], art.extra_tensors["prototypes"])


def test_artifact_json_is_plain_json_and_there_is_no_pickle(saved, art):
    meta = json.loads((saved / "artifact.json").read_text())
    assert meta["format_version"] == A.FORMAT_VERSION
    assert meta["spec"] == art.spec.to_json()
    assert meta["catalog"] == art.catalog.to_json()
    assert meta["calibration"] == {"temperature": 1.5}
    assert meta["model_id"] == art.model_id
    assert len(meta["weights_sha256"]) == 64
    for f in saved.iterdir():
        head = f.read_bytes()[:4]
        assert not head.startswith(b"\x80")  # pickle protocol 2+ opcode
        assert not head.startswith(b"PK")  # torch.save zip archive
    # safetensors = 8-byte little-endian header length + JSON header of plain tensor descriptions
    blob = (saved / "model.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(tensors) == set(art.state_dict) | {"extra.prototypes"}
    assert all(set(v) == {"dtype", "shape", "data_offsets"} for v in tensors.values())


def test_model_id_is_stable_and_content_derived(make_tiny_artifact, tmp_path):
    a, b = make_tiny_artifact(), make_tiny_artifact()
    id_a = A.save(a, str(tmp_path / "a"))
    id_b = A.save(b, str(tmp_path / "b"))
    assert id_a == id_b  # same content, saved twice (different created_at): same id
    assert A.save(a, str(tmp_path / "a")) == id_a  # overwriting in place: same id
    assert A.load(str(tmp_path / "a")).model_id == id_a
    ids = {id_a}
    for variant in (
        make_tiny_artifact(temperature=2.0),
        make_tiny_artifact(seed=1),
        make_tiny_artifact(abstain={"method": "msp", "threshold": 0.5}),
    ):
        ids.add(A.save(variant, str(tmp_path / f"v{len(ids)}")))
    assert len(ids) == 4  # temperature, weights and abstention each change the id
    # metrics and provenance do not change a prediction, so they do not change the id
    c = make_tiny_artifact()
    c.metrics, c.provenance = {"test_top1": 0.99}, {"who": "someone else"}
    assert A.save(c, str(tmp_path / "c")) == id_a


def test_overwrite_replaces_the_artifact_and_leaves_no_temp_dirs(make_tiny_artifact, tmp_path):
    dest = tmp_path / "model"
    A.save(make_tiny_artifact(), str(dest))
    new_id = A.save(make_tiny_artifact(temperature=3.0), str(dest))
    assert A.load(str(dest)).temperature == 3.0 and A.load(str(dest)).model_id == new_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_saved_folder_is_readable_as_the_umask_allows(make_tiny_artifact, tmp_path):
    """The artifact folder gets the permissions any new folder would (umask 022: 0755), not mkdtemp's 0700: a
    server or a colleague running as another user can read the model."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        A.save(make_tiny_artifact(), str(tmp_path / "m"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755


def test_build_network_reproduces_the_saved_model(art, saved):
    from landmark_core.models import build_model

    original = build_model(art.spec)
    original.load_state_dict(art.state_dict)
    original.eval()
    rebuilt = build_network(A.load(str(saved)))
    assert not rebuilt.training
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), original(x))
        assert torch.equal(rebuilt.embed(x), original.embed(x))


def test_build_network_rejects_weights_that_do_not_fit(art):
    art.spec = ModelSpec("scratch", 4, weights="none")  # a 4-class head for 3-class weights
    with pytest.raises(ArtifactError, match="do not fit the scratch architecture"):
        build_network(art)


# ------------------------------------------------------------------------------------------------------ errors


def test_missing_dir(tmp_path):
    with pytest.raises(ArtifactError, match="not a directory") as ei:
        A.load(str(tmp_path / "no_such_model"))
    assert "no_such_model" in str(ei.value) and "landmark train" in str(ei.value)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        A.load(str(f))


def test_missing_artifact_json(saved):
    (saved / "artifact.json").unlink()
    with pytest.raises(ArtifactError, match="missing artifact file") as ei:
        A.load(str(saved))
    assert str(saved / "artifact.json") in str(ei.value)


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing artifact file") as ei:
        A.load(str(saved))
    assert str(saved / "model.safetensors") in str(ei.value)


def test_truncated_weights_sha_mismatch(saved):
    w = saved / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="sha256") as ei:
        A.load(str(saved))
    assert "model.safetensors" in str(ei.value)


def test_replaced_weights_sha_mismatch(saved, make_tiny_artifact, tmp_path):
    A.save(make_tiny_artifact(seed=5), str(tmp_path / "other"))
    (saved / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match="sha256.*model.safetensors|model.safetensors.*sha256"):
        A.load(str(saved))


def test_a_model_id_that_is_not_the_content_hash_is_refused(saved, tmp_path, make_tiny_artifact):
    """model_id names the ONNX cache files and every tag row: an id edited into artifact.json (another model's, to
    be served its cached network; or a path, to write outside the cache) is refused on load."""
    from landmark_core import onnx_runtime as rt

    other = A.save(make_tiny_artifact(seed=5), str(tmp_path / "other"))
    for forged in (other, "../../../../tmp/escaped", 7):
        _edit_meta(saved, lambda m, forged=forged: m.update(model_id=forged))
        with pytest.raises(ArtifactError, match="is not the hash of the artifact's content") as ei:
            A.load(str(saved))
        assert "artifact.json" in str(ei.value)
    with pytest.raises(ValueError, match="cannot name a cache file"):
        rt._cache_path("../../escaped", "onnx")


def test_corrupt_json(saved):
    p = saved / "artifact.json"
    p.write_text(p.read_text()[:50])
    with pytest.raises(ArtifactError, match="not valid JSON") as ei:
        A.load(str(saved))
    assert "artifact.json" in str(ei.value)


def test_wrong_format_version(saved):
    _edit_meta(saved, lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="format_version") as ei:
        A.load(str(saved))
    assert "artifact.json" in str(ei.value)


def test_malformed_metadata(saved):
    _edit_meta(saved, lambda m: m.pop("calibration"))
    with pytest.raises(ArtifactError, match="malformed") as ei:
        A.load(str(saved))
    assert "artifact.json" in str(ei.value)


def test_class_count_mismatch(saved):
    def more_classes(m):
        m["spec"]["num_classes"] = 4

    _edit_meta(saved, more_classes)
    with pytest.raises(ArtifactError, match="4 classes but the catalog 3") as ei:
        A.load(str(saved))
    assert "artifact.json" in str(ei.value)


def test_bad_catalog_in_metadata(saved):
    def bad_coords(m):
        m["catalog"]["landmarks"][0]["lat"] = 123.0

    _edit_meta(saved, bad_coords)
    with pytest.raises(ArtifactError, match="out of range") as ei:
        A.load(str(saved))
    assert "artifact.json" in str(ei.value)


def test_artifact_catalog_is_usable_for_lookups(saved):
    cat = A.load(str(saved)).catalog
    assert isinstance(cat, Catalog)
    assert cat.find("tower").folder == "00.Tower" and cat.find("02.dome").id == 2
