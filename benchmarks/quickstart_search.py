"""The quick start's design search: which settings move kNN furthest above random init in minutes.

Each candidate is the command a new user types, ``vissl-lite pretrain simclr/quickstart`` plus the
candidate's overrides, run in its own process with the wall clock around the whole command (Python
start-up, data, the kNN of the encoder at initialisation, training, the final kNN). The numbers come
from the run's ``metrics.jsonl``: its epoch-0 record is the random-init baseline
(``monitor.at_start``), the last epoch record the trained encoder, both on the same kNN (the
preset's ``monitor.train_subset`` bank, ``monitor.test_subset`` queries, k and temperature).

Candidates run one after another, never side by side: wall time is the quantity searched, and two
runs on the same cores would slow each other. The table (candidate, settings, wall time, kNN at
init, final kNN, gain, images/s) is printed and, with ``--docs``, written into docs/benchmarks.md
between the ``quickstart-search`` markers; the README's quick-start figures are the ``preset`` row.

    python benchmarks/quickstart_search.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --docs docs/benchmarks.md                               # every candidate, ~5 min each
    python benchmarks/quickstart_search.py --candidates preset simclr_w16   # some of them
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, command_line, default_data, markdown_table  # noqa: E402
from vissl_lite.jsonl import read_jsonl  # noqa: E402

PRESET = "simclr/quickstart"
BEGIN, END = "<!-- quickstart-search:begin -->", "<!-- quickstart-search:end -->"

#: the quick start before this search (ResNet-18 with the ImageNet stem, temperature 0.5, lr 0.06,
#: 32-px views, 8 epochs), as overrides on today's preset: the candidates that start from it
FIRST = ["backbone.cifar_stem=false", "backbone.width=64", "method.temperature=0.5", "optim.lr=0.06",
         "~augment.global_size", "~augment.global_scale", "train.epochs=8"]
W16 = ["backbone.cifar_stem=true", "backbone.width=16"]
T02, PX24 = ["method.temperature=0.2"], ["augment.global_size=24"]
#: the quick start's run length, data and monitor, for candidates that start from another preset
SHORT = ["data.subset=5000", "data.num_workers=2", "train.batch_size=128", "train.epochs=8",
         "checkpoint.every_epochs=0", "monitor.every_epochs=4", "monitor.at_start=true",
         "monitor.train_subset=5000", "monitor.test_subset=2000"]

#: name -> (what it tries, where it starts, its overrides). It starts from ``preset`` (the preset
#: as shipped), ``first`` (the preset as shipped plus FIRST) or another preset's name.
CANDIDATES: Dict[str, tuple] = {
    "preset": ("the preset as shipped", "preset", []),
    "first": ("the quick start before this search: ResNet-18 with the ImageNet stem (8x8 maps "
              "after it)", "first", []),
    "cifar_w16": ("CIFAR stem at width 16: the same FLOPs, 32x32 maps in the first stage",
                  "first", W16),
    "w16_lr0.3": ("w16 at a 5x higher lr", "first", W16 + ["optim.lr=0.3"]),
    "w16_t0.2": ("w16 at temperature 0.2", "first", W16 + T02),
    "w16_lr0.3_t0.2": ("w16, lr 0.3, temperature 0.2", "first", W16 + ["optim.lr=0.3"] + T02),
    "w16_scale0.2": ("w16, crops of at least 20% of the image", "first",
                     W16 + ["augment.global_scale=[0.2,1.0]"]),
    "w16_b64": ("w16, batch 64: twice the steps", "first", W16 + ["train.batch_size=64"]),
    "w16_t0.1": ("w16 at temperature 0.1", "first", W16 + ["method.temperature=0.1"]),
    "w16_t0.2_scale0.2": ("w16, temperature 0.2, crops of at least 20%", "first",
                          W16 + T02 + ["augment.global_scale=[0.2,1.0]"]),
    "w16_t0.2_lr0.03": ("w16, temperature 0.2, half the lr", "first",
                        W16 + T02 + ["optim.lr=0.03"]),
    "w16_t0.2_24px": ("w16, temperature 0.2, views and kNN at 24 px (0.56x the FLOPs)", "first",
                      W16 + T02 + PX24),
    "24px_e12": ("w16, temperature 0.2, 24 px, 12 epochs", "first",
                 W16 + T02 + PX24 + ["train.epochs=12"]),
    "24px_e12_lr0.03_s0.2": ("as 24px_e12, lr 0.03, crops of at least 20%", "first",
                             W16 + T02 + PX24 + ["train.epochs=12", "optim.lr=0.03",
                                                 "augment.global_scale=[0.2,1.0]"]),
    "16px_e24": ("w16, temperature 0.2, views and kNN at 16 px, 24 epochs", "first",
                 W16 + T02 + ["augment.global_size=16", "train.epochs=24", "monitor.every_epochs=8"]),
    "w24_24px_e6": ("width 24 (2.2x the FLOPs of w16), temperature 0.2, 24 px, 6 epochs", "first",
                    ["backbone.cifar_stem=true", "backbone.width=24"] + T02 + PX24
                    + ["train.epochs=6", "monitor.every_epochs=3"]),
    "barlow_w16": ("Barlow Twins (its CIFAR-10 preset) at w16, the quick start's data and length",
                   "barlow_twins/cifar10_resnet18", W16 + SHORT),
}


def run_candidate(name: str, base: str, overrides: List[str], data: str, extra: List[str],
                  workdir: Path) -> Dict[str, Any]:
    """Run one candidate through the CLI; its wall time and the kNN records of its metrics.jsonl."""
    out = workdir / name
    preset = PRESET if base in ("preset", "first") else base
    overrides = (FIRST if base == "first" else []) + list(overrides)
    cmd = [sys.executable, "-m", "vissl_lite.cli", "pretrain", preset, f"data.root={data}",
           f"output_dir={out}", "logger.progress=false", "logger.plot=false", "overwrite=true",
           *overrides, *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        return {"name": name, "error": f"exit {proc.returncode}:\n{tail}"}
    records = read_jsonl(out / "metrics.jsonl")
    epochs = [r for r in records if r.get("type") == "epoch" and "knn_top1" in r]
    steps = [r for r in records if r.get("type") == "step" and "img_per_s" in r]
    if len(epochs) < 2 or epochs[0]["epoch"] != 0:
        return {"name": name, "error": "no kNN at initialisation and after training "
                                       "(monitor.at_start and monitor.every_epochs)"}
    first, last = epochs[0], epochs[-1]
    return {"name": name, "wall_s": wall, "epochs": last["epoch"],
            "knn_init": first["knn_top1"], "knn_final": last["knn_top1"],
            "gain": last["knn_top1"] - first["knn_top1"],
            "curve": [(r["epoch"], r["knn_top1"]) for r in epochs],
            "img_per_s": (sorted(r["img_per_s"] for r in steps)[len(steps) // 2] if steps else None),
            "summary": next((line for line in proc.stdout.splitlines() if "chance is" in line), "")}


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def table(results: List[Dict[str, Any]]) -> str:
    rows = []
    for r in results:
        what, base, overrides = CANDIDATES.get(r["name"], ("", "?", []))
        settings = " ".join([*overrides, *r.get("extra_overrides", [])]) or "-"
        if "error" in r:
            rows.append([r["name"], what, base, f"`{settings}`", "failed", "", "", "", "", ""])
            continue
        curve = ", ".join(f"{k:.1f}" for _, k in r["curve"][1:])
        rows.append([r["name"], what, base, f"`{settings}`", minutes(r["wall_s"]), f"{r['knn_init']:.1f}",
                     f"{r['knn_final']:.1f}", f"{r['gain']:+.1f}", curve,
                     f"{r['img_per_s']:.0f}" if r["img_per_s"] else ""])
    return markdown_table(["candidate", "what it tries", "starts from", "overrides", "wall",
                           "kNN init", "kNN final", "gain", "kNN along the way",
                           "train img/s"], rows)


def write_docs(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to write the table into")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"wrote the table into {path}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--data", default=default_data(),
                    help="CIFAR-10: a torchvision folder, or the JPEG ImageFolder (dir or .tar.gz)")
    ap.add_argument("--docs", default=None, help="write the table into this docs/benchmarks.md")
    ap.add_argument("--json", default=None,
                    help="keep the raw results here: a candidate run again replaces its entry, "
                         "the others stay, and the table shows them all")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: write the table of the results kept in --json")
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("-o", "--override", dest="overrides", nargs="+", action="extend", default=[],
                    help="extra overrides for every candidate")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = str(Path(args.data).expanduser().resolve())
    if not Path(data).exists():
        raise SystemExit(f"--data {data} does not exist; pass the CIFAR-10 JPEG archive "
                         f"(../shared/datasets/cifar10-jpeg.tar.gz) or a torchvision CIFAR-10 folder")
    cores = os.cpu_count()
    if args.table_only and not args.json:
        raise SystemExit("--table-only writes the table of the results kept in --json; name it")
    candidates = [] if args.table_only else args.candidates
    print(f"{cores} CPU cores; candidates run one at a time: {' '.join(candidates)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="vissl_quickstart_") as tmp:
        workdir = Path(args.workdir or tmp)
        for name in candidates:
            load = os.getloadavg()[0]
            _, base, overrides = CANDIDATES[name]
            result = run_candidate(name, base, overrides, data, args.overrides, workdir)
            result["load_before"] = load
            results.append(result)
            if "error" in result:
                print(f"{name}: FAILED {result['error']}", flush=True)
            else:
                print(f"{name}: {minutes(result['wall_s'])}, kNN {result['knn_init']:.1f} -> "
                      f"{result['knn_final']:.1f} ({result['gain']:+.1f}); along the way "
                      f"{[k for _, k in result['curve']]}", flush=True)
    for r in results:
        r["command"], r["extra_overrides"] = command_line(), args.overrides
    if args.json:
        kept = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else []
        ran = {r["name"] for r in results}
        results = [r for r in kept if r["name"] not in ran] + results
        Path(args.json).write_text(json.dumps(results, indent=1))
        results.sort(key=lambda r: list(CANDIDATES).index(r["name"])
                     if r["name"] in CANDIDATES else len(CANDIDATES))
    text = (f"{cores} CPU cores, no GPU, one candidate at a time; "
            f"`python benchmarks/quickstart_search.py --json ...` wrote every row.\n\n"
            + table(results))
    print("\n" + text)
    if args.docs:
        write_docs(Path(args.docs), text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
