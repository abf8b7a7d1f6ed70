"""Growing the catalog without retraining: the recognizers (head | gallery | both), `landmark catalog add | remove |
list | upgrade | eval`, and a tag run that finds a landmark the model never trained on."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import catalog as job
from landmark_core import abstention, recognizer as rz
from landmark_core.artifact import Artifact, load, save
from landmark_core.calibration import threshold_at_accept_rate
from landmark_core.catalog import Catalog
from landmark_core.models import ModelSpec, build_model
from landmark_core.predictor import Predictor
from landmark_core.preprocess import EvalPreset
from landmark_core.synthetic import generate_dataset
from landmark_core.tagging import read_and_decode
from tests.cli_asserts import assert_error_names

torch.set_num_threads(2)

SMALL = EvalPreset(size=96, resize=110)  # ImageNet features tell the synthetic shapes apart at this size already
OLD = ("tower", "arch", "dome")


# ------------------------------------------------------------------------------------------- a small trained model


def _decode(uris: list[str]) -> np.ndarray:
    dec = read_and_decode(
        {"uri": uris, "etag": [None] * len(uris), "size_bytes": [None] * len(uris)},
        preset=SMALL,
        opts=job.storage.S3Options(),
    )
    assert dec["ok"].all()
    return dec["image"]


def _split_files(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    folders = sorted(p.name for p in (root / split).iterdir())
    uris = [str(f) for i, d in enumerate(folders) for f in sorted((root / split / d).glob("*.jpg"))]
    labels = np.array([i for i, d in enumerate(folders) for _ in (root / split / d).glob("*.jpg")])
    return uris, labels


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Photos of the model's 3 landmarks (train/val/test) and of a 4th it never saw (pyramid)."""
    root = tmp_path_factory.mktemp("enroll")
    old = generate_dataset(
        root / "old",
        shapes=OLD,
        n_classes=3,
        train_per_class=8,
        val_per_class=3,
        test_per_class=4,
        image_size=(128, 96),
        seed=5,
    )
    new = generate_dataset(
        root / "new",
        shapes=("pyramid",),
        n_classes=1,
        train_per_class=6,
        test_per_class=4,
        image_size=(128, 96),
        seed=6,
    )
    return {"root": root, "old": root / "old", "new": root / "new", "old_info": old, "new_info": new}


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> dict:
    """An EfficientNet-Lite0 (ImageNet backbone) whose head is fitted on the 3 old landmarks' training photos
    (nearest class mean), with the kNN abstention bank, gallery and validation tensors training writes."""
    spec = ModelSpec("efficientnet_lite0", 3, weights="imagenet")
    torch.manual_seed(0)
    net = build_model(spec).eval()
    tr_uris, tr_y = _split_files(world["old"], "train")
    va_uris, va_y = _split_files(world["old"], "val")
    catalog = Catalog.from_folders(sorted(p.name for p in (world["old"] / "train").iterdir()), name="shapes")
    art = Artifact(
        spec=spec,
        catalog=catalog,
        preprocess=SMALL,
        state_dict=net.state_dict(),
        abstain={"method": "knn", "threshold": 0.0, "accept_rate": 0.95, "k": 5},
    )
    p = Predictor(art, runtime="torch")
    _, tr_e = p.logits_and_embeddings(_decode(tr_uris))
    means = rz.unit(np.stack([tr_e[tr_y == c].mean(axis=0) for c in range(3)]))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.from_numpy(means * 20).float(), torch.zeros(3)
    art = replace(art, state_dict=state)
    p = Predictor(art, runtime="torch")
    va_z, va_e = p.logits_and_embeddings(_decode(va_uris))
    extra = abstention.reference_tensors("knn", tr_e, tr_y, 3)
    extra.update(rz.gallery_tensors(tr_e, tr_y, extra["center"], 3))
    val_scores = abstention.known_score("knn", va_z, va_e, temperature=1.0, extra=extra)
    extra.update({rz.VAL_LOGITS: va_z, rz.VAL_EMB: va_e, rz.VAL_LABELS: va_y, "val_scores": np.sort(val_scores)})
    rec, _ = rz.choose(va_z, va_e, va_y, temperature=1.0, extra=extra, n_classes=3, n_head=3)
    art = replace(
        art,
        abstain={**art.abstain, "threshold": threshold_at_accept_rate(val_scores, 0.95)},
        extra_tensors={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in extra.items()},
        recognizer=rec.to_json(),
    )
    path = tmp_path_factory.mktemp("trained") / "model"
    save(art, str(path))
    return {"path": str(path), "artifact": art}


def _top1(model: str, uris: list[str]) -> list[str | None]:
    p = Predictor(model, runtime="torch")
    out = p.predict_arrays(_decode(uris))
    return [p.catalog[int(i)].name for i in out["topk_idx"][:, 0]]


@pytest.fixture(scope="module")
def enrolled(trained, world, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("enrolled") / "model"
    summary = job.run(
        job.CatalogConfig(
            action="add",
            model=trained["path"],
            output=str(out),
            name="Pyramid Plaza",
            lat=48.1,
            lon=11.5,
            country="DE",
            runtime="torch",
            photos=str(world["new"] / "train" / "00.Pyramid"),
        )
    )
    return {"path": str(out), "summary": summary}


# ------------------------------------------------------------------------------------------- recognizers


def _toy():
    """Unit gallery of 3 classes along orthogonal axes in 6-D; class 2 has no head column (enrolled)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 5)
    gallery = rz.unit(np.eye(6)[labels] * 5 + rng.normal(0, 0.3, (15, 6))).astype(np.float32)
    extra = {rz.GALLERY: gallery, rz.GALLERY_LABELS: labels, "center": np.zeros(6, np.float32)}
    return extra


def test_gallery_vote_weights_neighbours_by_similarity():
    extra = _toy()
    q = rz.unit(np.array([[1.0, 0.1, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0]], np.float32))
    p = rz.gallery_vote(q, extra[rz.GALLERY], extra[rz.GALLERY_LABELS], 3, k=7, tau=0.05)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.argmax(axis=1).tolist() == [0, 2]
    loose = rz.gallery_vote(q, extra[rz.GALLERY], extra[rz.GALLERY_LABELS], 3, k=7, tau=10.0)
    assert loose[0, 0] < p[0, 0]  # a high tau weighs the 2 other-class neighbours almost as much as the 5 close ones


def test_both_gives_enrolled_landmarks_only_the_gallery_mass():
    extra = _toy()
    emb = np.array([[0, 0, 1.0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]], np.float32)  # an enrolled photo, a class-0 photo
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])  # the head is confidently wrong on the class-0 photo
    both = rz.probabilities(rz.Recognizer("both", k=5), logits, emb, temperature=1.0, extra=extra, n_classes=3)
    gal = rz.probabilities(rz.Recognizer("gallery", k=5), logits, emb, temperature=1.0, extra=extra, n_classes=3)
    np.testing.assert_allclose(both.sum(axis=1), 1.0)
    np.testing.assert_allclose(both[:, 2], gal[:, 2])  # no head column: the gallery's vote alone
    assert both[0].argmax() == 2  # the head's vote for class 0 cannot take an enrolled landmark's photo
    assert 0.4 < both[1, 1] < 0.6  # head and gallery disagree: half each
    with pytest.raises(rz.RecognizerError, match="enrolled landmarks need the gallery or both"):
        rz.probabilities(rz.Recognizer("head"), logits, emb, temperature=1.0, extra=extra, n_classes=3)


def test_choose_measures_and_refuses_the_head_for_enrolled_landmarks():
    extra = _toy()
    emb = np.eye(6)[[0, 1, 2, 2]].astype(np.float32)
    logits = np.array([[0.0, 5.0]] * 4)  # a useless head
    rec, m = rz.choose(logits, emb, np.array([0, 1, 2, 2]), temperature=1.0, extra=extra, n_classes=3, n_head=2)
    assert set(m["val_top1"]) == {"both", "gallery"}  # the head cannot name class 2: not a candidate
    assert m["val_top1"][rec.mode] == max(m["val_top1"].values()) == 1.0
    with pytest.raises(rz.RecognizerError, match="--recognizer head: not possible"):
        rz.choose(
            logits, emb, np.array([0, 1, 2, 2]), temperature=1.0, extra=extra, n_classes=3, n_head=2, forced="head"
        )


# ------------------------------------------------------------------------------------------- add / list / remove


def test_add_enrolls_a_landmark_the_model_never_trained_on(trained, enrolled, world):
    art = load(enrolled["path"])
    assert art.model_id != trained["artifact"].model_id
    assert len(art.catalog) == 4 and art.spec.num_classes == 3
    lm = art.catalog.find("Pyramid Plaza")
    assert (lm.id, lm.lat, lm.lon, lm.country) == (3, 48.1, 11.5, "DE")
    assert art.recognizer["mode"] in ("gallery", "both")
    meta = json.loads(Path(enrolled["path"], "artifact.json").read_text())
    assert meta["recognizer"]["mode"] == art.recognizer["mode"]  # recorded in artifact.json
    assert meta["provenance"]["parent_model_id"] == trained["artifact"].model_id
    assert meta["provenance"]["lineage"] == [trained["artifact"].model_id]
    labels = art.extra_tensors[rz.GALLERY_LABELS].numpy()
    assert (labels == 3).sum() == 5 and (art.extra_tensors[rz.VAL_LABELS].numpy() == 3).sum() == 1  # 6 = 5 + 1 held
    assert (art.extra_tensors["bank_labels"].numpy() == 3).sum() == 5  # known to the abstention score too
    # the network is untouched
    for k, v in trained["artifact"].state_dict.items():
        assert torch.equal(art.state_dict[k], v)
    new_test = [str(f) for f in sorted((world["new"] / "test" / "00.Pyramid").glob("*.jpg"))]
    assert _top1(enrolled["path"], new_test).count("Pyramid Plaza") >= 3
    old_test, old_y = _split_files(world["old"], "test")
    names = trained["artifact"].catalog.names
    before = np.mean([a == names[y] for a, y in zip(_top1(trained["path"], old_test), old_y)])
    after = np.mean([a == names[y] for a, y in zip(_top1(enrolled["path"], old_test), old_y)])
    assert after >= before - 1 / len(old_y)  # the old landmarks do not get worse (one photo of slack)


def test_list_shows_head_and_enrolled_landmarks(enrolled, capsys):
    out = job.run(job.CatalogConfig(action="list", model=enrolled["path"]))
    rows = {r["name"]: r for r in out["landmarks"]}
    assert rows["Pyramid Plaza"]["source"] == "enrolled" and rows["Pyramid Plaza"]["gallery_photos"] == 5
    assert rows["Tower"]["source"] == "head" and rows["Tower"]["gallery_photos"] == 8
    assert "Pyramid Plaza" in capsys.readouterr().out


def test_remove_enrolled_landmark_restores_the_gallery(trained, enrolled, tmp_path):
    out = tmp_path / "removed"
    job.run(job.CatalogConfig(action="remove", model=enrolled["path"], output=str(out), name="pyramid plaza"))
    art, orig = load(str(out)), trained["artifact"]
    assert art.catalog == orig.catalog
    for k in (rz.GALLERY, rz.GALLERY_LABELS, "bank", "bank_labels", rz.VAL_EMB, rz.VAL_LABELS):
        assert torch.equal(art.extra_tensors[k], orig.extra_tensors[k]), k


def test_remove_trained_landmark_drops_its_head_column(trained, tmp_path, world):
    out = tmp_path / "no-arch"
    job.run(job.CatalogConfig(action="remove", model=trained["path"], output=str(out), name="Arch"))
    art = load(str(out))
    assert art.catalog.names == ["Tower", "Dome"] and art.spec.num_classes == 2
    assert art.state_dict["head.weight"].shape[0] == 2
    assert set(art.extra_tensors[rz.GALLERY_LABELS].numpy().tolist()) == {0, 1}
    assert set(art.extra_tensors["bank_labels"].numpy().tolist()) == {0, 1}
    towers = [str(f) for f in sorted((world["old"] / "test" / "00.Tower").glob("*.jpg"))]
    assert _top1(str(out), towers) == _top1(trained["path"], towers)  # the other landmarks' answers stay


def test_upgrade_gives_an_old_artifact_a_gallery(trained, world, tmp_path):
    keep = {k: v for k, v in trained["artifact"].extra_tensors.items() if k in ("bank", "center", "val_scores")}
    old = replace(trained["artifact"], extra_tensors=keep, recognizer={}, model_id="")
    save(old, str(tmp_path / "old"))
    cfg = dict(model=str(tmp_path / "old"), runtime="torch")
    with pytest.raises(job.enroll.EnrollError, match="catalog upgrade"):
        job.run(
            job.CatalogConfig(
                action="add",
                output=str(tmp_path / "x"),
                name="P",
                photos=str(world["new"] / "train" / "00.Pyramid"),
                **cfg,
            )
        )
    job.run(job.CatalogConfig(action="upgrade", output=str(tmp_path / "up"), data=str(world["old"]), **cfg))
    up = load(str(tmp_path / "up"))
    assert up.extra_tensors[rz.GALLERY].shape[0] == 24 and up.extra_tensors[rz.VAL_LABELS].shape[0] == 9
    assert up.recognizer["mode"] in rz.RECOGNIZERS


def _add_from_folders(trained, folders, output, **flags):
    """`catalog add --from-folders FOLDERS --max-photos 4` into ``output``; the new artifact."""
    job.run(
        job.CatalogConfig(
            action="add",
            model=trained["path"],
            output=str(output),
            runtime="torch",
            from_folders=str(folders),
            max_photos=4,
            **flags,
        )
    )
    return load(str(output))


def test_add_from_folders_with_coords_csv(trained, world, tmp_path, capsys):
    csv = tmp_path / "coords.csv"
    csv.write_text("folder,name,lat,lon,country\n00.Pyramid,Great Pyramid,29.9792,31.1342,EG\n00.Pyramd,X,1,2,EG\n")
    art = _add_from_folders(trained, world["new"] / "train", tmp_path / "m", coords=str(csv))
    lm = art.catalog.find("Great Pyramid")
    assert (lm.lat, lm.country) == (29.9792, "EG")
    assert (art.extra_tensors[rz.GALLERY_LABELS].numpy() == lm.id).sum() == 3  # 4 photos: 3 + 1 held back
    # a misspelt folder's row is named, not ignored without a word
    folders = ", ".join(repr(f) for f in sorted(p.name for p in (world["new"] / "train").iterdir()))
    assert (
        f"[catalog] warning: --coords {csv}: 1 of its 2 rows names no class folder of --from-folders, ignored: "
        f"'00.Pyramd' (the folders: {folders})\n"
    ) in capsys.readouterr().err


def test_add_from_folders_reads_a_coords_csv_at_their_root(trained, world, tmp_path):
    """As train reads one at --data's root: a folder of class folders with its coords.csv needs no --coords."""
    root = tmp_path / "new"
    root.mkdir()
    for folder in (world["new"] / "train").iterdir():
        (root / folder.name).symlink_to(folder)
    (root / "coords.csv").write_text("folder,name,lat,lon,country\n00.Pyramid,Great Pyramid,29.9792,31.1342,EG\n")
    lm = _add_from_folders(trained, root, tmp_path / "m").catalog.find("Great Pyramid")
    assert (lm.lat, lm.lon, lm.country) == (29.9792, 31.1342, "EG")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["add", "--model", "M", "--name", "X", "--photos", "P"], "--output"),
        (["add", "--model", "M", "--output", "O", "--photos", "P"], "--photos needs --name"),
        (
            ["add", "--model", "M", "--output", "O", "--name", "X", "--photos", "P", "--from-folders", "F"],
            "exactly one of --photos",
        ),
        (
            ["add", "--model", "M", "--output", "O", "--name", "X", "--photos", "P", "--lat", "1"],
            "both --lat and --lon",
        ),
        (["add", "--model", "M", "--output", "O", "--name", "X", "--photos", "P", "--max-photos", "1"], "--max-photos"),
        (["add", "--model", "M", "--output", "M", "--name", "X", "--photos", "P"], "--output must differ"),
        (["remove", "--model", "M", "--output", "O"], "--name"),
        # a flag the action would ignore is refused, not silently dropped
        (["remove", "--model", "M", "--output", "O", "--name", "X", "--recognizer", "head"], "--recognizer"),
        (["list", "--model", "M", "--batch-size", "8"], "--batch-size"),
        (["upgrade", "--model", "M", "--output", "O", "--data", "D", "--recognizer", "both"], "--recognizer"),
        (["eval", "--model", "M", "--photos", "P", "--seed", "3"], "--seed"),
        # numpy's seeds are >= 0: refused before the model and photos are read (add took -1 silently)
        (
            ["add", "--model", "M", "--output", "O", "--name", "X", "--photos", "P", "--seed", "-1"],
            "--seed must be >= 0",
        ),
        (["upgrade", "--model", "M", "--output", "O", "--data", "D", "--seed", "-1"], "--seed must be >= 0"),
        (
            ["add", "--model", "M", "--output", "O", "--name", "X", "--photos", "P", "--country", "Portugal"],
            "--country must be an ISO 3166-1 alpha-2 code",
        ),
    ],
)
def test_bad_arguments_fail_fast_naming_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        job.main(argv)
    assert e.value.code == 2
    assert_error_names(capsys.readouterr().err, needle)


def test_each_action_takes_the_flags_it_uses():
    """upgrade embeds as many photos as add does: it takes add's Ray flags and its own seed (the training split)."""
    ns = job.build_parser().parse_args(
        ["upgrade", "--model", "M", "--output", "O", "--data", "D", "--ray-min-photos", "10", "--seed", "4"]
    )
    cfg = job.config_from_args(ns)
    assert (cfg.action, cfg.ray_min_photos, cfg.seed, cfg.batch_size, cfg.recognizer) == ("upgrade", 10, 4, 32, None)
    cfg = job.config_from_args(
        job.build_parser().parse_args(["remove", "--model", "M", "--output", "O", "--name", "X"])
    )
    assert (cfg.name, cfg.runtime, cfg.seed) == ("X", "auto", 0)


def test_duplicate_name_and_missing_photos_are_clear_errors(enrolled, world, tmp_path, capsys):
    rc = job.main(
        [
            "add",
            "--model",
            enrolled["path"],
            "--output",
            str(tmp_path / "o"),
            "--name",
            "Pyramid Plaza",
            "--photos",
            str(world["new"] / "train" / "00.Pyramid"),
            "--runtime",
            "torch",
        ]
    )
    assert rc == 2 and "already in the catalog" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    missing = tmp_path / "nothing-here"
    with pytest.raises(SystemExit) as e:
        job.main(["add", "--model", enrolled["path"], "--output", str(tmp_path / "o"), "--name", "Q", "--photos",
                  str(missing)])  # fmt: skip
    assert e.value.code == 2 and not (tmp_path / "o").exists()
    assert_error_names(capsys.readouterr().err, f"--photos {missing}", "no such directory")


def test_a_bad_argument_of_an_action_is_told_with_that_actions_name(enrolled, capsys):
    """As argparse's own errors are: `landmark catalog remove`'s name, not `landmark catalog {add,...}`; two lines,
    the error and where the action's flags are listed, with no usage line of every flag above them."""
    with pytest.raises(SystemExit) as exit_:
        job.main(["remove", "--model", enrolled["path"], "--name", "X", "--output", enrolled["path"]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == (
        "landmark catalog remove: error: --output must differ from --model: the old artifact stays as it is\n"
        "(landmark catalog remove --help lists its flags)\n"
    )
    with pytest.raises(SystemExit) as exit_:  # argparse's own error (an unknown flag, told by the top parser)
        job.main(["remove", "--model", enrolled["path"], "--name", "X", "--output", "o", "--bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines() == [  # named by the action all the same, and its --help
        "landmark catalog remove: error: unrecognized arguments: --bogus",
        "(landmark catalog remove --help lists its flags)",
    ]


def test_output_spelled_another_way_than_model_is_still_refused(enrolled, tmp_path, capsys, monkeypatch):
    """`--output ./m`, `m/`, an absolute path or a link to the model's folder: each replaced the source model (its
    model_id, which later lineage names, gone); only the exact same text was refused."""
    model = Path(enrolled["path"])
    monkeypatch.chdir(model.parent)
    (tmp_path / "link").symlink_to(model)
    for spelled in ("./" + model.name, model.name + "/", str(model.resolve()), str(tmp_path / "link")):
        with pytest.raises(SystemExit) as exit_:
            job.main(["remove", "--model", enrolled["path"], "--name", "Pyramid Plaza", "--output", spelled])
        assert exit_.value.code == 2, spelled
        assert_error_names(capsys.readouterr().err, "--output must differ from --model")
    assert load(enrolled["path"]).model_id == enrolled["summary"]["model_id"]


def test_a_landmark_added_without_a_location_is_named_in_a_warning(trained, world, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["add", "--model", trained["path"], "--output", str(out), "--name", "Nowhere Plaza", "--runtime", "torch"]
    assert job.main(argv + ["--photos", str(world["new"] / "train" / "00.Pyramid")]) == 0
    err = capsys.readouterr().err
    assert "[catalog] warning: 1 of 1 new landmarks have no location ('Nowhere Plaza')" in err and "--lat" in err


def test_removing_a_landmark_not_in_the_catalog_lists_the_ones_that_are(enrolled, tmp_path, capsys):
    code = job.main(["remove", "--model", enrolled["path"], "--name", "Nowhere", "--output", str(tmp_path / "o")])
    line = assert_error_names(capsys.readouterr().err, "--name", "no landmark 'Nowhere'")
    assert code == 2 and "'Pyramid Plaza'" in line


def test_catalog_eval_measures_known_and_unknown_photos(enrolled, world, capsys):
    """`catalog eval`: top-1, tagged-and-right and abstained on class folders, tagged on unknown folders; JSON with
    --json, lines for a person without (it printed indented JSON either way)."""
    argv = ["eval", "--model", enrolled["path"], "--photos", str(world["old"] / "test"), "--runtime", "torch"]
    argv += ["--unknown", str(world["new"] / "test")]
    assert job.main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    known = out["known"]
    assert known["photos"] == 12 and set(known["per_landmark"]) == {p.name for p in (world["old"] / "test").iterdir()}
    # the same numbers from the Predictor, photo by photo (not all zeros, nor the eval's own arithmetic)
    p = Predictor(enrolled["path"], runtime="torch")
    uris, y = _split_files(world["old"], "test")
    pred = p.predict_arrays(_decode(uris))
    right, tagged = pred["topk_idx"][:, 0] == y, pred["status"] == "tagged"
    assert right.mean() > 0.5  # the trained landmarks are recognised: the shares below measure something
    assert known["top1"] == pytest.approx(right.mean()) and known["abstained"] == pytest.approx(1 - tagged.mean())
    assert known["tagged_right"] == pytest.approx((right & tagged).mean())
    assert np.mean(list(known["per_landmark"].values())) == pytest.approx(known["top1"])  # 4 photos each
    (unknown,) = out["unknown"].values()
    new_uris, _ = _split_files(world["new"], "test")
    assert unknown["photos"] == 4
    assert unknown["tagged"] == pytest.approx((p.predict_arrays(_decode(new_uris))["status"] == "tagged").mean())
    assert job.main(argv) == 0
    text = capsys.readouterr().out
    assert not text.lstrip().startswith("{") and f"known: 12 photos, top-1 {100 * known['top1']:.1f}%" in text
    assert f"unknown {world['new'] / 'test'}: 4 photos" in text


# ------------------------------------------------------------------------------------------- the tag job


@pytest.mark.slow
def test_tag_run_finds_the_enrolled_landmark(ray_local, trained, enrolled, world, tmp_path):
    from jobs.tag import TagConfig, run as tag_run
    from landmark_core import tagstore

    photos = tmp_path / "uploads"
    photos.mkdir()
    for f in sorted((world["new"] / "test" / "00.Pyramid").glob("*.jpg")):
        (photos / f"new-{f.name}").write_bytes(f.read_bytes())
    for f in sorted((world["old"] / "test" / "00.Tower").glob("*.jpg")):
        (photos / f"old-{f.name}").write_bytes(f.read_bytes())
    tags = str(tmp_path / "tags")
    first = tag_run(TagConfig(input=str(photos), output=tags, model=trained["path"], runtime="torch"))
    assert first["counts"]["total"] == 8
    # the enrolled model was made from the trained one: what that one settled is not re-tagged unless asked
    again = tag_run(TagConfig(input=str(photos), output=tags, model=enrolled["path"], runtime="torch"))
    assert again["skipped"] == 8 and again["counts"]["total"] == 0
    summary = tag_run(TagConfig(input=str(photos), output=tags, model=enrolled["path"], runtime="torch", retag=True))
    assert summary["model_id"] == load(enrolled["path"]).model_id and summary["counts"]["failed"] == 0
    rows = tagstore.read(tags).to_pylist()  # the current row of each photo
    new = [r for r in rows if Path(r["uri"]).name.startswith("new-")]
    assert sum(r["landmark"] == "Pyramid Plaza" for r in new) >= 3
    found = next(r for r in new if r["landmark"] == "Pyramid Plaza")
    assert (found["lat"], found["lon"]) == (48.1, 11.5)
    old = [r for r in rows if Path(r["uri"]).name.startswith("old-")]
    assert all(r["landmark"] != "Pyramid Plaza" for r in old)


@pytest.mark.slow
def test_many_photos_are_embedded_with_ray_data_alike(ray_local, trained, enrolled, world, tmp_path, monkeypatch):
    out = tmp_path / "ray"
    through_ray = []  # the Ray Data path ran (else this would compare the in-process path with itself)
    real = job._embed_with_ray
    monkeypatch.setattr(job, "_embed_with_ray", lambda *a, **k: through_ray.append(len(a[2])) or real(*a, **k))
    job.run(
        job.CatalogConfig(
            action="add",
            model=trained["path"],
            output=str(out),
            name="Pyramid Plaza",
            lat=48.1,
            lon=11.5,
            country="DE",
            runtime="torch",
            ray_min_photos=2,
            batch_size=2,
            photos=str(world["new"] / "train" / "00.Pyramid"),
        )
    )
    assert through_ray and through_ray[0] >= 2, through_ray
    a, b = load(str(out)), load(enrolled["path"])
    for k in (rz.GALLERY, rz.GALLERY_LABELS, "bank", rz.VAL_EMB, rz.VAL_LABELS):
        np.testing.assert_allclose(a.extra_tensors[k].numpy(), b.extra_tensors[k].numpy(), atol=1e-4, err_msg=k)
    assert a.catalog == b.catalog and a.recognizer == b.recognizer


def test_bench_compare_measures_both_artifacts_side_by_side(trained, enrolled, world):
    from argparse import Namespace

    from jobs import bench

    paths, _ = _split_files(world["old"], "test")
    head, both = Predictor(trained["path"], runtime="torch"), Predictor(enrolled["path"], runtime="torch")
    images = _decode(paths)
    r = bench.bench_compare(
        Namespace(batch_size=4, compare_model=enrolled["path"]), head, both, paths, images, decode_threads=1, rounds=1
    )
    assert r["compare_recognizer"] == both.recognizer.mode and r["recognizer"] == head.recognizer.mode
    for k in ("compare_model_ips", "compare_model_ips_base", "compare_limit_ips", "compare_model_cpu_ips"):
        assert r[k] > 0, k
    assert r["ratio_compare_model"] == round(r["compare_model_ips"] / r["compare_model_ips_base"], 3)


def test_add_from_s3_with_a_broken_photo(trained, world, s3, s3_bucket, monkeypatch, tmp_path, capsys):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    for f in sorted((world["new"] / "train" / "00.Pyramid").glob("*.jpg")):
        client.put_object(Bucket=s3_bucket, Key=f"enroll/pyramid/{f.name}", Body=f.read_bytes())
    client.put_object(Bucket=s3_bucket, Key="enroll/pyramid/broken.jpg", Body=b"not a photo at all")
    out = tmp_path / "m"
    summary = job.run(
        job.CatalogConfig(
            action="add",
            model=trained["path"],
            output=str(out),
            name="Pyramid Plaza",
            runtime="torch",
            photos=f"s3://{s3_bucket}/enroll/pyramid/",
            s3_endpoint=s3.endpoint,
        )
    )
    assert summary["change"]["added"][0]["failed"] == 1 and summary["change"]["added"][0]["photos"] == 6
    assert "broken.jpg skipped: decode" in capsys.readouterr().err  # a bad photo is named, the others enroll
    art = load(str(out))
    assert (art.extra_tensors[rz.GALLERY_LABELS].numpy() == 3).sum() == 5


def test_proto_abstention_grows_and_shrinks_msp_is_refused(trained, world, tmp_path):
    art = trained["artifact"]
    tr_uris, tr_y = _split_files(world["old"], "train")
    _, tr_e = Predictor(art, runtime="torch").logits_and_embeddings(_decode(tr_uris))
    protos = abstention.reference_tensors("proto", tr_e, tr_y, 3)["prototypes"]
    proto = replace(
        art,
        abstain={**art.abstain, "method": "proto"},
        model_id="",
        extra_tensors={**art.extra_tensors, "prototypes": torch.from_numpy(protos)},
    )
    save(proto, str(tmp_path / "proto"))
    photos = str(world["new"] / "train" / "00.Pyramid")
    job.run(
        job.CatalogConfig(
            action="add",
            model=str(tmp_path / "proto"),
            output=str(tmp_path / "p+"),
            name="Pyramid Plaza",
            runtime="torch",
            photos=photos,
        )
    )
    grown = load(str(tmp_path / "p+"))
    assert grown.extra_tensors["prototypes"].shape[0] == 4
    job.run(
        job.CatalogConfig(
            action="remove", model=str(tmp_path / "p+"), output=str(tmp_path / "p-"), name="Pyramid Plaza"
        )
    )
    assert torch.equal(load(str(tmp_path / "p-")).extra_tensors["prototypes"], torch.from_numpy(protos))
    msp = replace(art, abstain={"method": "msp", "threshold": 0.3}, model_id="")
    save(msp, str(tmp_path / "msp"))
    with pytest.raises(job.enroll.EnrollError, match="needs knn or proto"):
        job.run(
            job.CatalogConfig(
                action="add",
                model=str(tmp_path / "msp"),
                output=str(tmp_path / "m+"),
                name="Pyramid Plaza",
                runtime="torch",
                photos=photos,
            )
        )
    assert not (tmp_path / "m+").exists()
