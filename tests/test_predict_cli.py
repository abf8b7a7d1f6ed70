"""`landmark predict`: JSON lines and human output, exit codes, bad files, EXIF GPS, and how the model is found."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from landmark_core import predict_cli
from landmark_core.predict_cli import MODEL_ENV
from landmark_core.synthetic import render_scene
from tests.cli_asserts import assert_error_names

REPO = Path(__file__).resolve().parents[1]
KEYS = {"path", "status", "error", "landmark", "score", "lat", "lon", "tags", "exif_lat", "exif_lon"}


def _rat(x: float, den: int) -> TiffImagePlugin.IFDRational:
    return TiffImagePlugin.IFDRational(round(x * den), den)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli_photos")
    a = render_scene("tower", np.random.default_rng(1), (160, 120))
    a.save(d / "a.jpg", "JPEG", quality=90)
    b = render_scene("dome", np.random.default_rng(2), (120, 160))
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    # 33°51'24.48"S 151°12'55.08"E (Sydney Opera House)
    gps[1], gps[2] = "S", (_rat(33, 1), _rat(51, 1), _rat(24.48, 100))
    gps[3], gps[4] = "E", (_rat(151, 1), _rat(12, 1), _rat(55.08, 100))
    b.save(d / "gps.jpg", "JPEG", quality=90, exif=exif)
    (d / "bad.jpg").write_bytes(b"definitely not a jpeg\n")
    return {
        "a": str(d / "a.jpg"),
        "gps": str(d / "gps.jpg"),
        "bad": str(d / "bad.jpg"),
        "missing": str(d / "missing.jpg"),
    }


def _json_lines(text: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows = [json.loads(ln) for ln in lines]  # every line is valid JSON
    for r in rows:
        assert set(r) == KEYS
    return rows


def _main(argv, capsys) -> tuple[int, str, str]:
    try:
        code = predict_cli.main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_model_env(monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)


# ---------------------------------------------------------------------------------------------- subprocess


def test_subprocess_json_good_and_bad(tiny_artifact, photos):
    env = {k: v for k, v in os.environ.items() if k != MODEL_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "predict",
            "--json",
            "--model",
            tiny_artifact.path,
            photos["a"],
            photos["bad"],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    rows = _json_lines(proc.stdout)
    assert [r["path"] for r in rows] == [photos["a"], photos["bad"]]
    good, bad = rows
    assert good["status"] == "tagged" and good["error"] is None
    assert good["landmark"] in ("Tower", "Arch", "Dome") and 1 / 3 - 1e-6 <= good["score"] <= 1
    assert len(good["tags"]) == 3 and good["tags"][0]["name"] == good["landmark"]
    assert (good["lat"], good["lon"]) == (good["tags"][0]["lat"], good["tags"][0]["lon"])
    assert bad["status"] == "failed" and bad["error"] and "not_an_image" in bad["error"]
    assert bad["landmark"] is None and bad["score"] is None and bad["tags"] is None


def test_subprocess_without_model_exit_2(photos):
    env = {k: v for k, v in os.environ.items() if k != MODEL_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "predict", "--json", photos["a"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--model" in proc.stderr and MODEL_ENV in proc.stderr and "landmark train" in proc.stderr


def first_line_then_close(argv: list[str], env: dict | None = None) -> tuple[bytes, int, str]:
    """Runs ``argv`` into a pipe whose reader takes the first line and closes it, as `| head -1` does; returns
    (that line, exit code, stderr). The pipe holds 4 KiB (F_SETPIPE_SZ): a command writing more than that after
    its first line is still writing when the reader goes, so it meets the closed pipe every run, not by chance."""
    import fcntl

    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    with subprocess.Popen(argv, cwd=REPO, env=env, stdout=w, stderr=subprocess.PIPE) as proc:
        os.close(w)
        line = b""
        while not line.endswith(b"\n") and (byte := os.read(r, 1)):
            line += byte
        os.close(r)
        err = proc.communicate(timeout=300)[1].decode()
    return line, proc.returncode, err


def test_a_reader_that_closes_after_the_first_line_ends_predict_quietly(tiny_artifact, photos, tmp_path):
    """`landmark predict FOLDER | head -1`: the first answer, then exit 0 and no BrokenPipeError on stderr (the
    answers after it, ~10 KiB, meet the closed pipe). Before: a BrokenPipeError traceback, exit 1."""
    import shutil

    for i in range(40):
        shutil.copy(photos["a"], tmp_path / f"{i:02d}.jpg")
    env = {k: v for k, v in os.environ.items() if k != MODEL_ENV}
    argv = [sys.executable, "-m", "landmark_core.predict_cli", "--model", tiny_artifact.path, "--runtime", "torch"]
    line, code, err = first_line_then_close(argv + [str(tmp_path)], env)
    assert line.startswith(str(tmp_path / "00.jpg").encode() + b": "), (line, err[-3000:])
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    assert code == 0, err[-3000:]


# ---------------------------------------------------------------------------------------------- in-process


def test_in_process_json_lines(tiny_artifact, photos, capsys, no_model_env):
    code, out, err = _main(["--json", "--model", tiny_artifact.path, photos["a"], photos["bad"], photos["gps"]], capsys)
    assert code == 1
    rows = _json_lines(out)
    assert [r["path"] for r in rows] == [photos["a"], photos["bad"], photos["gps"]]  # input order kept
    assert [r["status"] for r in rows] == ["tagged", "failed", "tagged"]
    assert rows[1]["error"].startswith("not_an_image")
    assert all(isinstance(r["score"], float) for r in (rows[0], rows[2]))
    for r in (rows[0], rows[2]):
        scores = [t["score"] for t in r["tags"]]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_only_good_files_exit_zero(tiny_artifact, photos, capsys, no_model_env):
    code, out, _ = _main(["--json", "--model", tiny_artifact.path, photos["a"], photos["gps"]], capsys)
    assert code == 0
    assert [r["status"] for r in _json_lines(out)] == ["tagged", "tagged"]


def test_exif_gps_is_reported(tiny_artifact, photos, capsys, no_model_env):
    code, out, _ = _main(["--json", "--model", tiny_artifact.path, photos["gps"], photos["a"]], capsys)
    assert code == 0
    gps_row, plain_row = _json_lines(out)
    assert gps_row["exif_lat"] == pytest.approx(-(33 + 51 / 60 + 24.48 / 3600), abs=1e-6)
    assert gps_row["exif_lon"] == pytest.approx(151 + 12 / 60 + 55.08 / 3600, abs=1e-6)
    assert plain_row["exif_lat"] is None and plain_row["exif_lon"] is None


def test_missing_file_is_a_failed_row_not_a_crash(tiny_artifact, photos, capsys, no_model_env):
    code, out, _ = _main(["--json", "--model", tiny_artifact.path, photos["missing"], photos["a"]], capsys)
    assert code == 1
    missing, good = _json_lines(out)
    assert missing["status"] == "failed" and missing["error"] == "read: not found"
    assert good["status"] == "tagged"


def test_no_model_exit_2_says_how_to_get_one(photos, capsys, no_model_env):
    code, out, err = _main(["--json", photos["a"]], capsys)
    assert code == 2
    assert out == ""
    assert "--model" in err and MODEL_ENV in err and "landmark train" in err


def test_model_from_environment_variable(tiny_artifact, photos, capsys, monkeypatch):
    monkeypatch.setenv(MODEL_ENV, tiny_artifact.path)
    code, out, err = _main(["--json", photos["a"]], capsys)
    assert code == 0, err
    (row,) = _json_lines(out)
    assert row["status"] == "tagged"


def test_model_flag_beats_environment_variable(tiny_artifact, photos, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "nothing_here"))
    code, _, _ = _main(["--json", "--model", tiny_artifact.path, photos["a"]], capsys)
    assert code == 0
    code, out, err = _main(["--json", photos["a"]], capsys)  # now the (bad) env var is used
    assert code == 2 and "nothing_here" in err and out == ""


def test_bad_model_dir_exit_2(photos, capsys, no_model_env, tmp_path):
    code, out, err = _main(["--model", str(tmp_path / "nope"), photos["a"]], capsys)
    assert code == 2 and "nope" in err and "not a directory" in err and out == ""
    assert err.startswith("landmark predict: --model: "), err


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_below_one_exit_2_naming_k(tiny_artifact, photos, capsys, no_model_env, k):
    code, out, err = _main(["-k", k, "--model", tiny_artifact.path, photos["a"]], capsys)
    assert code == 2
    assert out == ""
    assert_error_names(err, "-k")


@pytest.mark.parametrize(("typo", "meant"), [("--jsn", "--json"), ("--mdoel", "--model")])
def test_a_misspelt_flag_is_told_with_the_one_it_is_closest_to(photos, capsys, no_model_env, typo, meant):
    """As every other command: two lines, not the usage block, and the flag meant."""
    code, out, err = _main([typo, "x", photos["a"]], capsys)
    assert code == 2 and out == "" and "usage:" not in err, err
    assert err.splitlines() == [
        f"landmark predict: error: unrecognized arguments: {typo} ({typo}: did you mean {meant}?)",
        "(landmark predict --help lists its flags)",
    ], err


def test_top_k_limits_the_tags(tiny_artifact, photos, capsys, no_model_env):
    code, out, _ = _main(["--json", "-k", "2", "--model", tiny_artifact.path, photos["a"]], capsys)
    assert code == 0
    (row,) = _json_lines(out)
    assert len(row["tags"]) == 2 and row["tags"][0]["score"] >= row["tags"][1]["score"]


def test_human_output_lists_top_k_with_percentages(tiny_artifact, photos, capsys, no_model_env):
    code, out, _ = _main(["-k", "3", "--model", tiny_artifact.path, photos["gps"], photos["bad"]], capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{photos['gps']}: ") and "%" in lines[0]
    tag_lines = lines[1:4]
    names = []
    for ln in tag_lines:
        assert ln.startswith("    ") and "%" in ln and " at " in ln  # score, name and location
        pct = float(ln.split("%")[0])
        assert 0 <= pct <= 100
        names.append(ln.split("%", 1)[1].split(" at ")[0].strip())
    assert sorted(names) == ["Arch", "Dome", "Tower"]
    pcts = [float(ln.split("%")[0]) for ln in tag_lines]
    assert pcts == sorted(pcts, reverse=True) and sum(pcts) == pytest.approx(100, abs=0.2)
    assert names[0] in lines[0] and "(tagged, score " in lines[0]  # the headline names the top-1, tagged
    assert lines[4].strip().startswith("photo's own GPS: -33.8")
    assert lines[5].startswith(f"{photos['bad']}: FAILED (not_an_image")
    assert not any(ln.lstrip().startswith("{") for ln in lines)  # not JSON


def test_human_output_no_landmark(make_tiny_artifact, photos, capsys, no_model_env, tmp_path):
    from landmark_core import artifact

    dest = tmp_path / "strict"
    artifact.save(make_tiny_artifact(abstain={"method": "msp", "threshold": 1.01}), str(dest))
    code, out, _ = _main(["--model", str(dest), photos["a"]], capsys)
    assert code == 0
    assert "no landmark recognised (best guess" in out.splitlines()[0]
    code, out, _ = _main(["--json", "--model", str(dest), photos["a"]], capsys)
    (row,) = _json_lines(out)
    assert row["status"] == "no_landmark" and row["landmark"] is None and row["lat"] is None
    assert row["tags"] and isinstance(row["score"], float)


def test_run_writes_to_the_given_stream(tiny_artifact, photos):
    from landmark_core.predict_cli import run

    buf = io.StringIO()
    assert run([photos["a"]], tiny_artifact.path, k=1, as_json=True, out=buf) == 0
    (row,) = _json_lines(buf.getvalue())
    assert len(row["tags"]) == 1


def test_run_default_output_follows_the_current_sys_stdout(tiny_artifact, photos):
    """Regression: run()'s default stream used to be bound at import time (out=sys.stdout), so redirecting
    sys.stdout afterwards (contextlib.redirect_stdout, pytest's capsys, notebooks) lost the output."""
    import contextlib

    from landmark_core.predict_cli import run

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run([photos["a"]], tiny_artifact.path, k=1, as_json=True) == 0
    (row,) = _json_lines(buf.getvalue())
    assert row["path"] == photos["a"]


def test_a_folder_stands_for_its_photos_in_argument_order(tiny_artifact, photos, capsys, no_model_env, tmp_path):
    """A folder argument is its photos (recursive, by name, sorted), as the tag job lists --input; a folder with
    none is one failed answer; what is not a photo by name is said on stderr; a photo named twice is answered
    once; answers keep the arguments' order."""
    import shutil

    day = tmp_path / "day"
    (day / "sub").mkdir(parents=True)
    shutil.copy(photos["a"], day / "z.jpg")
    shutil.copy(photos["gps"], day / "sub" / "b.JPG")
    (day / "notes.txt").write_text("not a photo")
    (tmp_path / "nothing").mkdir()
    argv = ["--json", "--model", tiny_artifact.path, photos["a"], str(day), str(tmp_path / "nothing")]
    code, out, err = _main(argv + [str(day / "z.jpg")], capsys)
    rows = _json_lines(out)
    assert [r["path"] for r in rows] == [
        photos["a"],
        str(day / "sub" / "b.JPG"),
        str(day / "z.jpg"),
        str(tmp_path / "nothing"),
    ]
    assert [r["status"] for r in rows] == ["tagged", "tagged", "tagged", "failed"]
    assert rows[-1]["error"] == "no photos in this folder" and code == 1
    assert rows[1]["exif_lat"] is not None  # the photo itself was read, not the folder
    assert f"1 object(s) under {day} are not photos by name, not answered (.txt 1); to answer them anyway" in err
    code, out, _ = _main(["--json", "--model", tiny_artifact.path, str(day)], capsys)
    assert code == 0 and len(_json_lines(out)) == 2
