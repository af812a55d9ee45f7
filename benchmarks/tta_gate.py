"""The TTA gate on trained models: what it decides on the validation images it sees, and whether that
holds on validation images it does not see.

    python benchmarks/tta_gate.py --case drive=RUN/model.unetkit@/work/shared/data/drive/training \
        --case camvid=CAMVID_RUN/model.unetkit@CAMVID_FOLDER ...

For each case (NAME=MODEL@DATA) the artifact is copied and `unetkit tune-tta` (`tune_model_tta`)
decides on the images its training tuned on (the artifact's `postprocess_tuning` keys, else its
calibration keys), for the metric its training tuned for (else pooled Dice). Then, on the rest of
its validation split (`train_config.data.val_keys` minus those: held out from the decision; none for
a 5-image split), arg-max of the plain and of the TTA probabilities are scored for the same metric,
with the paired-bootstrap 5th percentile of the gain over those images (and, for more than two
classes, the class-average IoU over every class, class 0 included). Seconds per image, plain and
TTA, are timed on the decision images (one thread, torch). Appended to docs/benchmarks.md with the
command and the machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from drive import machine  # noqa: E402
from report import append_markdown  # noqa: E402

from unetkit.artifact import load_artifact  # noqa: E402
from unetkit.evaluation.labelled import iter_probabilities, load_labelled  # noqa: E402
from unetkit.metrics.scores import nan_mean, per_class_iou  # noqa: E402
from unetkit.tuning.gate import bootstrap_gain  # noqa: E402
from unetkit.tuning.postprocess import parts_statistic, score_parts  # noqa: E402
from unetkit.tuning.tta import tune_model_tta  # noqa: E402


def decision_keys(meta) -> tuple[list[str], list[str], str]:
    """(the keys training tuned on, the rest of its validation split, the metric it tuned for)."""
    m = meta.metrics
    record = m.get("postprocess_tuning") or m.get("calibration") or {}
    keys = list(record.get("keys") or [])
    if not keys:
        raise SystemExit(f"{meta.name}: the artifact records no validation keys to decide on")
    val = list((meta.train_config.get("data") or {}).get("val_keys") or [])
    metric = (m.get("postprocess_tuning") or {}).get("metric", "dice")
    return keys, [k for k in val if k not in set(keys)], metric


def held_out(model: Path, data: str, keys: list[str], metric: str) -> dict[str, float]:
    artifact, samples = load_labelled(model, data, keys, progress=False)
    k, ignore = artifact.meta.num_classes, artifact.meta.ignore_index
    truths = [s.labels for s in samples]
    parts, labels_of = {}, {}
    for tta in (False, True):
        labels_of[tta] = [p.argmax(0) for _, p in iter_probabilities(artifact, samples, {"tta": tta}, backend="torch",
                                                                      progress=False)]
        parts[tta] = score_parts(labels_of[tta], truths, k, metric, ignore)
    statistic = parts_statistic(k, metric)
    gain, lower = bootstrap_gain(parts[False], parts[True], statistic)
    out = {"images": len(samples), "plain": statistic(parts[False].sum(0)), "tta": statistic(parts[True].sum(0)),
           "gain": gain, "lower": lower}
    if k > 2:  # the class-average IoU over every class, class 0 included (CamVid's score)
        matrices = parts if metric != "rand" else {  # dice/iou parts are the confusion matrices already
            t: score_parts(labels_of[t], truths, k, "iou", ignore) for t in (False, True)}
        out |= {f"miou_{'tta' if t else 'plain'}": mean_iou(m.sum(0).reshape(k, k)) for t, m in matrices.items()}
    return out


def mean_iou(matrix) -> float:
    return float(nan_mean(per_class_iou(matrix)))


def seconds_per_image(model: Path, data: str, keys: list[str]) -> tuple[float, float]:
    artifact, samples = load_labelled(model, data, keys, progress=False)
    out = []
    for tta in (False, True):
        t0 = time.perf_counter()
        for _ in iter_probabilities(artifact, samples, {"tta": tta}, backend="torch", progress=False):
            pass
        out.append((time.perf_counter() - t0) / len(samples))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", required=True, metavar="NAME=MODEL@DATA")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-tta")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.case:
        name, _, rest = case.partition("=")
        model, _, data = rest.partition("@")
        if not (name and model and data):
            raise SystemExit(f"--case {case!r}: expected NAME=MODEL@DATA")
        copy = out / f"{name}.unetkit"
        shutil.copyfile(model, copy)
        keys, others, metric = decision_keys(load_artifact(copy).meta)
        s = tune_model_tta(copy, data, keys=keys, metric=metric, backend="torch", progress=False)
        h = held_out(copy, data, others, metric) if others else None
        plain_s, tta_s = seconds_per_image(copy, data, keys[:4])
        rows.append((name, model, s, h, plain_s, tta_s))
        print(name, s["gate"]["reason"], h, plain_s, tta_s, flush=True)

    lines = [
        f"## TTA gate on trained models ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
        f"Command: `python benchmarks/tta_gate.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}, one thread, torch backend.", "",
        "Decision: `unetkit tune-tta` on the validation images the run tuned on, for the metric it tuned for "
        "(arg-max, before any postprocessing). Held out: the rest of the run's validation split, not seen by "
        "the decision. Gain = TTA minus plain; bound = the paired bootstrap's 5th percentile over images.", "",
        "| case | views | metric | decision images | plain | TTA | gain | bound | TTA | held-out images | plain | TTA "
        "| gain | bound | s/image plain | s/image TTA |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, _, s, h, plain_s, tta_s in rows:
        m, g = s["metric"], s["gate"]
        held = (f"{h['images']} | {h['plain']:.4f} | {h['tta']:.4f} | {h['gain']:+.4f} | {h['lower']:+.4f}" if h
                else "0 | | | | ")
        lines.append(f"| {name} | {s['views']} | {m} | {s['images']} | {s[m + '_plain']:.4f} | {s[m + '_tta']:.4f} | "
                     f"{g['gain']:+.4f} | {g['lower_bound']:+.4f} | **{'on' if s['tta'] else 'off'}** | {held} | "
                     f"{plain_s:.2f} | {tta_s:.2f} |")
    for name, _, _, h, _, _ in rows:
        if h and "miou_plain" in h:
            lines += ["", f"{name}, held out, class-average IoU over every class (class 0 included): plain "
                      f"{h['miou_plain']:.4f}, TTA {h['miou_tta']:.4f} ({h['miou_tta'] - h['miou_plain']:+.4f})."]
    lines += ["", "Models:", ""] + [f"- {name}: `{model}`" for name, model, *_ in rows] + [""]
    text = "\n".join(lines)
    append_markdown(args.benchmarks, text)
    print(text)


if __name__ == "__main__":
    main()
