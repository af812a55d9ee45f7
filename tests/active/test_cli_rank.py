"""`unetkit rank`: user errors are one line on stderr with exit code 2; a run writes CSV + export."""

import csv
import subprocess
import sys

import pytest

from tests.active.conftest import designed_artifact, write_gray


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetkit", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert match in lines[0], lines[0]


def test_missing_folder(designed, tmp_path):
    assert_user_error(run_cli("rank", str(designed), str(tmp_path / "nowhere")), "nowhere: no such folder")


def test_empty_folder(designed, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("rank", str(designed), str(tmp_path / "empty")), "empty: the folder holds no images")


@pytest.mark.parametrize(("args", "match"), [
    (["--by", "tta", "--no-tta"], "'tta' needs the TTA views"),
    (["--export", "out"], "--export needs --top-k K"),
])
def test_bad_options(designed, images, tmp_path, args, match):
    assert_user_error(run_cli("rank", str(designed), str(images), *args, cwd=tmp_path), match)


@pytest.mark.parametrize(("args", "match"), [
    (["--by", "confidence"], "'confidence' is not one of 'entropy', 'margin', 'tta', 'combined'"),
    (["--aggregate", "max"], "'max' is not one of 'mean', 'top', 'foreground'"),
])
def test_a_choice_outside_its_set_fails_at_parse_time(designed, images, tmp_path, args, match):
    proc = run_cli("rank", str(designed), str(images), *args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and match in proc.stderr, proc.stderr


def test_tta_views_choose_the_views_ranked_over(tmp_path, rng):
    """`--tta-views mirror` reaches the scorer: the model reading the pixel above never disagrees with
    its mirror, while over its own 8 views it does."""
    model = designed_artifact(tmp_path / "up.unetkit", shift="up")
    write_gray(tmp_path / "images" / "noise.png", rng.uniform(0, 255, (40, 52)))
    tta = {}
    for views in ("mirror", None):
        out = tmp_path / f"{views}.csv"
        proc = run_cli("rank", str(model), str(tmp_path / "images"), "--by", "tta", "--csv", str(out),
                       *(["--tta-views", views] if views else []))
        assert proc.returncode == 0, proc.stderr
        tta[views] = float(next(csv.DictReader(out.open()))["tta"])
    assert tta["mirror"] < 1e-6 < 0.3 < tta[None]


def test_missing_model(images, tmp_path):
    assert_user_error(run_cli("rank", str(tmp_path / "none.unetkit"), str(images)), "none.unetkit: model artifact not found")


def test_a_run_ranks_reports_skips_and_exports(designed, images, tmp_path):
    (images / "broken.png").write_bytes(b"junk")
    proc = run_cli("rank", str(designed), str(images), "--by", "entropy", "--top-k", "2", "--export", str(tmp_path / "out"),
                   "--csv", str(tmp_path / "ranking.csv"), "--backend", "torch")
    assert proc.returncode == 0, proc.stderr
    assert "most uncertain of 4 images" in proc.stdout and "ambiguous.png" in proc.stdout
    assert "4 images ranked, 1 skipped" in proc.stdout
    assert "skipped " in proc.stderr and "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    rows = list(csv.DictReader((tmp_path / "ranking.csv").open()))
    assert [r["file"] for r in rows] == ["ambiguous.png", "faint.png", "half.png", "clear.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["ambiguous.png", "faint.png"]
    again = run_cli("rank", str(designed), str(images), "--top-k", "2", "--export", str(tmp_path / "out"))
    assert_user_error(again, "the export folder exists and is not empty")
