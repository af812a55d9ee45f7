"""DRIVE vessels: `unetkit train --budget` (the auto-plan, no other flag) vs the MONAI recipe, same
split, same budget, one command:

    .venv/bin/python benchmarks/drive.py --data /work/shared/data/drive --budget 30m

unetkit trains on keys 21-35 and validates on 36-40 (`--keys-val`), FOV only, vessel = positive;
the peer (`benchmarks/monai_recipe.py`) trains on the same 15 images for the same budget. Both are
scored on the validation images: F1 (vessel Dice at probability 0.5), AUC ROC (sklearn on FOV
pixels), accuracy; the F1 at the best threshold is shown as a note (tuned on the same images, so
optimistic). Time-to-quality: unetkit's validation F1 over wall-clock minutes from its
metrics.jsonl, the peer's at its end; a PNG in docs/ and a table. Everything is appended to
docs/benchmarks.md with the command and the machine. `--full-train` trains the peer on all 20 and
unetkit on 19 (fit needs one held-out image for checkpoint selection: key 40), so the scores on the
validation keys are then not held-out figures; `--predict-test DIR` writes one float32 probability
TIFF in [0, 1] per DRIVE test image (`01_test.tif`, 0 outside the FOV), as `unetkit predict` would
(with TTA when the artifact chose it on its validation images).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from report import append_markdown, config_notes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def machine() -> str:
    import torch

    from unetkit.inference.backends import machine_id

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{machine_id()}{gpu}, Python {platform.python_version()}"


def train_unetkit(data: Path, budget: str, val_keys: list[str], out: Path,
                  config: Path | None = None) -> tuple[float, str]:
    """`unetkit train DATA --budget B` in a subprocess (the user's command); wall seconds and its output.
    `config` (a partial TrainConfig JSON) pins choices the plan then keeps."""
    cmd = [sys.executable, "-m", "unetkit", "train", str(data), "--budget", budget, "--out", str(out), "--quiet",
           "--val-keys", ",".join(val_keys)] + (["--config", str(config)] if config else [])
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"unetkit train failed:\n{run.stdout}\n{run.stderr}")
    return seconds, run.stdout


def binary_scores(prob: np.ndarray, truth: np.ndarray, fov: np.ndarray) -> dict[str, float]:
    """F1 at 0.5, AUC ROC, accuracy on FOV pixels; plus the best-threshold F1 (a note)."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    p, t = prob[fov].astype(np.float64), truth[fov].astype(bool)
    pred = p >= 0.5
    tp, fp, fn = np.sum(pred & t), np.sum(pred & ~t), np.sum(~pred & t)
    precision, recall, _ = precision_recall_curve(t, p)
    f1s = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {"f1": float(2 * tp / max(2 * tp + fp + fn, 1)), "auc": float(roc_auc_score(t, p)),
            "accuracy": float(np.mean(pred == t)), "f1_best_threshold": float(f1s.max()), "pixels": int(t.size)}


def load_split(train_dir: Path, keys: list[str]):
    from unetkit.data.dataset import load_samples
    from unetkit.data.pairing import pair_samples
    from unetkit.data.spec import load_spec

    spec = load_spec(train_dir)
    samples = [s for s in pair_samples(spec) if s.key in keys]
    return sorted(load_samples(samples, spec, progress=False), key=lambda s: s.key)


def artifact_probabilities(art: Any, images: list[np.ndarray], tta: bool | None = None,
                           views: str | None = None, scales: tuple[float, ...] = (1.0,)) -> list[np.ndarray]:
    """Each image's class probabilities as `unetkit predict` computes them for the loaded artifact
    `art`: its own tiling, resolution and TTA choice (`tta` None), or with TTA forced on or off;
    `views` as `unetkit predict --tta-views` (TTA on, those views). `scales` other than (1,):
    multi-scale inference at these factors of that resolution (benchmarks/camvid.py --scales), as
    `unetkit predict --resolutions` runs it (`TileConfig.resolutions`)."""
    from unetkit.inference.files import tile_config_for
    from unetkit.inference.predict import predict_image

    choice: dict[str, Any] = {} if tta is None else {"tta": tta}
    if views:
        choice = {"tta": True, **choice, "tta_views": views}
    config = tile_config_for(art, choice)
    if tuple(scales) != (1.0,):
        config = replace(config, resolutions=tuple(min(1.0, config.resolution * s) for s in scales))
    return [predict_image(art, im, config) for im in images]


def unetkit_probabilities(artifact: Path, images: list[np.ndarray], tta: bool | None = None) -> list[np.ndarray]:
    """The vessel probabilities (the last class) as `unetkit predict` writes them (`artifact_probabilities`)."""
    from unetkit.artifact import load_artifact

    return [p[-1] for p in artifact_probabilities(load_artifact(artifact), images, tta)]


def unetkit_curve(run: Path) -> list[tuple[float, float]]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # the foreground Dice of a two-class run (validation F1 at 0.5); "dice/foreground" in older logs
    return [(e["time"] / 60, e.get("mean_dice_foreground", e.get("dice/foreground"))) for e in events
            if e.get("event") == "val" and e.get("mean_dice_foreground", e.get("dice/foreground")) is not None]


def run_peer(train, val, budget_s: float, score) -> tuple[list[np.ndarray], float, int, list[tuple[float, float]]]:
    """The MONAI recipe on the same split and budget; validated 10 times (not charged to its budget)."""
    from monai_recipe import Pair, predict_monai, train_monai

    def pair(s):
        return Pair(s.key, s.image / 255.0, (s.labels == 1).astype(np.int64), s.labels != 255)

    def predict_all(net):
        return [predict_monai(net, (s.image / 255.0).astype(np.float32)) for s in val]

    t0 = time.perf_counter()
    net, steps, curve = train_monai([pair(s) for s in train], budget_s, log=lambda *_: None,
                                    validate=lambda net: score(predict_all(net))["f1"])
    seconds = time.perf_counter() - t0
    return predict_all(net), seconds, steps, curve


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: Path, title: str,
                xlabel: str = "wall-clock minutes", ylabel: str = "vessel F1 (Dice @ 0.5), 5 validation images") -> None:
    """One line per curve (label -> (minute, F1) points), markers at the validations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, curve), marker in zip(curves.items(), "osd^v", strict=False):
        if curve:
            ax.plot([m for m, _ in curve], [f for _, f in curve], marker=marker, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(curve: list[tuple[float, float]], peer: list[tuple[float, float]], path: Path, budget: str) -> None:
    plot_curves({"unetkit (validation F1 during training)": curve,
                 "MONAI recipe (validation F1; training minutes)": peer}, path, f"DRIVE, budget {budget}")


def write_test_predictions(data: Path, artifact: Path, out: Path) -> int:
    from unetkit.data.io import read_image, read_mask, write_tiff
    from unetkit.data.spec import roi_inside

    out.mkdir(parents=True, exist_ok=True)
    images = sorted((data / "test" / "images").glob("*_test.tif"))
    probs = unetkit_probabilities(artifact, [read_image(p) for p in images])
    for path, prob in zip(images, probs, strict=True):
        key = path.name.split("_")[0]
        fov = roi_inside(read_mask(data / "test" / "mask" / f"{key}_test_mask.gif"))
        write_tiff(out / f"{key}_test.tif", np.clip(np.where(fov, prob, 0.0), 0, 1).astype(np.float32))
    return len(images)


def main() -> None:
    from unetkit.config import parse_duration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="DRIVE root (holding training/ and test/)")
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--keys-val", default="36,37,38,39,40")
    ap.add_argument("--full-train", action="store_true", help="train on all 20 (unetkit: 19 + key 40 for selection)")
    ap.add_argument("--predict-test", type=Path, default=None)
    ap.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--config", type=Path, default=None,
                    help="partial TrainConfig JSON for unetkit (e.g. {\"model\": {\"norm\": \"instance\"}}); "
                         "the plan keeps what it sets and plans the rest")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-drive")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    data = args.data if (args.data / "training").is_dir() else args.data.parent
    train_dir = data / "training"
    val_keys = [k.strip() for k in args.keys_val.split(",") if k.strip()]
    all_keys = [f"{k}" for k in range(21, 41)]
    train_keys = [k for k in all_keys if k not in val_keys]
    budget_s = parse_duration(args.budget)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out / stamp

    fit_val = ["40"] if args.full_train else val_keys
    seconds, stdout = train_unetkit(train_dir, args.budget, fit_val, out / "unetkit", args.config)
    print(stdout)
    val = load_split(train_dir, val_keys)
    probs = unetkit_probabilities(out / "unetkit" / "model.unetkit", [s.image for s in val])

    def score(prob_list):
        truth = np.concatenate([(s.labels == 1).ravel() for s in val])
        fov = np.concatenate([(s.labels != 255).ravel() for s in val])
        return binary_scores(np.concatenate([p.ravel() for p in prob_list]), truth, fov)

    from unetkit.artifact import read_meta

    own = read_meta(out / "unetkit" / "model.unetkit").tta  # the artifact's TTA choice (made on validation)
    results = {f"unetkit (as it predicts: TTA {'on' if own else 'off'})": {**score(probs), "seconds": seconds}}
    other = unetkit_probabilities(out / "unetkit" / "model.unetkit", [s.image for s in val], tta=not own)
    results[f"unetkit {'--no-tta' if own else '--tta'}"] = {**score(other), "seconds": seconds}
    curve = unetkit_curve(out / "unetkit")
    if args.peer:
        train = load_split(train_dir, all_keys if args.full_train else train_keys)
        peer_probs, peer_s, peer_steps, peer_curve = run_peer(train, val, budget_s, score)
        results["monai"] = {**score(peer_probs), "seconds": peer_s, "steps": peer_steps}
    else:
        peer_curve = []
    png = ROOT / "docs" / f"drive-time-to-quality-{stamp}.png"
    plot(curve, peer_curve, png, args.budget)
    if args.predict_test:
        n = write_test_predictions(data, out / "unetkit" / "model.unetkit", args.predict_test)
        print(f"wrote {n} test probability maps to {args.predict_test}")

    plan = read_meta(out / "unetkit" / "model.unetkit").plan
    config_heading, config_plan = config_notes(args.config)  # the --config file, read once
    chosen = {c["key"]: c["value"] for c in plan.get("choices", [])}
    lines = [
        f"## DRIVE, `unetkit train --budget {args.budget}`{' vs the MONAI recipe' if args.peer else ''}"
        f"{config_heading} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python benchmarks/drive.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}  ",
        f"Split: train {'all 20' if args.full_train else ','.join(train_keys)}; scored on {','.join(val_keys)} "
        f"(FOV pixels, vessel = positive){'; the full-train model also saw these images' if args.full_train else ''}.  ",
        f"unetkit plan: width {chosen.get('model.base_width')}, depth {chosen.get('model.depth')}, patch "
        f"{chosen.get('data.patch_size')}, batch {chosen.get('data.batch_size')}, clDice {chosen.get('loss.cldice')}, "
        f"planned steps {chosen.get('steps')}; run folder `{out / 'unetkit'}`"
        f"{config_plan}.",
        "",
        "| method | F1 (Dice @ 0.5) | AUC ROC | accuracy | F1 @ best threshold (note) | wall clock |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['f1']:.4f} | {r['auc']:.4f} | {r['accuracy']:.4f} | {r['f1_best_threshold']:.4f} "
                     f"| {r['seconds'] / 60:.1f} min |")
    lines += ["", f"Time to quality (validation F1 vs minutes; `{png.relative_to(ROOT)}`). unetkit's minutes are "
              "wall clock including its own validations; the peer's are training minutes (its validations, "
              "done only for this curve, are not charged to it).", ""]
    for name, points in [("unetkit", curve), ("MONAI recipe", peer_curve)]:
        if points:
            lines += [f"{name}:", "", "| minutes | " + " | ".join(f"{m:.1f}" for m, _ in points) + " |",
                      "| --- | " + " | ".join("---" for _ in points) + " |",
                      "| F1 | " + " | ".join(f"{f:.3f}" for _, f in points) + " |", ""]
    lines += ["The best-threshold F1 is tuned on the scored images (optimistic); F1 @ 0.5 is the headline.", ""]
    text = "\n".join(lines)
    append_markdown(args.benchmarks, text)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
