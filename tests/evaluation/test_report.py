"""The HTML evaluation report: content, self-containment, and rendering in headless Chromium."""

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.evaluation_fixtures import drive_like, tiny_artifact
from unetkit.evaluation.evaluate import evaluate_model
from unetkit.evaluation.figures import FN_COLOUR, FP_COLOUR, TP_COLOUR, error_overlay
from unetkit.evaluation.report import SECTIONS, WorstImages, render_report, write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _row(key_dice):
    return {"classes": {"background": {"dice": 0.99}, "vessel": {"dice": key_dice}}}


def test_worst_images_keeps_the_k_lowest():
    worst = WorstImages(k=2)
    for i, dice in enumerate([0.9, 0.2, None, 0.5, 0.1, 0.7]):
        sample = SimpleNamespace(key=f"k{i}", image=np.zeros((3, 4, 4), np.float32), labels=np.zeros((4, 4), np.uint8))
        worst(sample, None, np.zeros((4, 4), np.uint8), _row(dice))
    assert [(w.key, w.score) for w in worst.images()] == [("k4", 0.1), ("k1", 0.2)]
    assert worst.images()[0].display.shape == (4, 4, 3)


def test_error_overlay_colours_fp_fn_tp_and_ignore():
    display = np.full((1, 5, 3), 100, np.uint8)
    truth = np.array([[1, 1, 0, 0, 255]], np.uint8)
    pred = np.array([[1, 0, 1, 0, 1]], np.uint8)
    out = error_overlay(display, truth, pred).astype(int)
    tp, fn, fp, tn, ign = out[0]
    assert tp[1] > tp[0] and tp[1] > tp[2]  # green
    assert fn[2] > fn[0] and fn[2] > 200  # blue
    assert fp[0] > 200 and fp[0] > fp[2]  # red
    assert (tn == 100).all() and (ign == 35).all()  # untouched gray, dimmed ignore
    assert len({TP_COLOUR, FP_COLOUR, FN_COLOUR}) == 3


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = drive_like(root / "d", n_images=4, size=(64, 60))
    model = tiny_artifact(root / "m.unetkit", head_scale=3.0)
    worst = WorstImages(k=2)
    result = evaluate_model(model, data, backend="torch", progress=False, on_image=worst)
    path = write_report(root / "report.html", result, worst.images(), title="Tiny <model> report")
    return path, result


def test_report_holds_every_section_and_is_self_contained(report):
    path, result = report
    text = path.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}"' in text
    assert "Tiny &lt;model&gt; report" in text  # escaped
    for header in ("IoU", "Dice", "Precision", "Recall", "Boundary IoU", "HD95 px", "ASSD px", "clDice", "AUC", "AP"):
        assert f"<th>{header}</th>" in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 3 + 2  # confusion, reliability, distribution + 2 worst images
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    assert f"{result['mean_iou']:.4f}" in text
    assert f"ECE {result['calibration']['ece']:.4f}" in text


def test_report_with_calibration_curves_and_no_worst(report):
    _, result = report
    rel = result["calibration"]["reliability"]
    text = render_report(result, [], calibration={"reliability_before": rel, "reliability_after": rel,
                                                  "ece_before": 0.2, "ece_after": 0.01})
    assert "No image with foreground" in text
    assert len(re.findall(r'src="data:image/png', text)) == 3


def _chromium() -> Path:
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.skip("chromium missing and apt-get unavailable")
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=600)
        proc = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=1200,
                              env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if proc.returncode != 0 or not CHROMIUM.exists():
            pytest.skip(f"could not install chromium: {proc.stderr[-300:]!r}")
    return CHROMIUM


@pytest.mark.slow
def test_report_renders_in_chromium(report, tmp_path):
    chromium = _chromium()
    path, _ = report
    # A copy that records, after load, how each image decoded and where each section sits.
    probe = ("<script>addEventListener('load',()=>{for(const i of document.images){i.dataset.w=i.naturalWidth;}"
             "for(const s of document.querySelectorAll('section')){s.dataset.h=s.getBoundingClientRect().height;}});</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(path.read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run([str(chromium), *CHROMIUM_FLAGS, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    widths = [int(w) for w in re.findall(r'data-w="(\d+)"', dom)]
    assert len(widths) == 5 and min(widths) > 100  # every figure decoded
    heights = dict(re.findall(r'<section id="(\w+)"[^>]*data-h="([\d.]+)"', dom))
    assert set(heights) == set(SECTIONS) and all(float(h) > 40 for h in heights.values())

    shot = tmp_path / "report.png"
    subprocess.run([str(chromium), *CHROMIUM_FLAGS, "--window-size=1280,3800", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120, cwd=tmp_path)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3800, 1280)
    assert pixels.std() > 20  # not a blank page
