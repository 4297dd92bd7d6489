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

PRESET = "simclr/quickstart"
BEGIN, END = "<!-- quickstart-search:begin -->", "<!-- quickstart-search:end -->"

#: name -> (what it tries, overrides on top of the preset). ``preset`` is the preset as shipped.
CANDIDATES: Dict[str, tuple] = {
    "preset": ("the preset as shipped", []),
}


def run_candidate(name: str, overrides: List[str], data: str, extra: List[str],
                  workdir: Path) -> Dict[str, Any]:
    """Run one candidate through the CLI; its wall time and the kNN records of its metrics.jsonl."""
    out = workdir / name
    cmd = [sys.executable, "-m", "vissl_lite.cli", "pretrain", PRESET, f"data.root={data}",
           f"output_dir={out}", "logger.progress=false", "logger.plot=false", *overrides, *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        return {"name": name, "error": f"exit {proc.returncode}:\n{tail}"}
    epochs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r.get("type") == "epoch" and "knn_top1" in r]
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r.get("type") == "step" and "img_per_s" in r]
    if len(epochs) < 2 or epochs[0]["epoch"] != 0:
        return {"name": name, "error": "no kNN at initialisation and after training "
                                       "(monitor.at_start and monitor.every_epochs)"}
    first, last = epochs[0], epochs[-1]
    return {"name": name, "wall_s": wall, "epochs": last["epoch"],
            "knn_init": first["knn_top1"], "knn_final": last["knn_top1"],
            "knn_best": max(r["knn_top1"] for r in epochs[1:]),
            "gain": last["knn_top1"] - first["knn_top1"],
            "curve": [(r["epoch"], r["knn_top1"]) for r in epochs],
            "img_per_s": (sorted(r["img_per_s"] for r in steps)[len(steps) // 2] if steps else None),
            "summary": next((line for line in proc.stdout.splitlines() if "chance is" in line), "")}


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def table(results: List[Dict[str, Any]]) -> str:
    rows = []
    for r in results:
        what, overrides = CANDIDATES.get(r["name"], ("", []))
        settings = " ".join(overrides) or "-"
        if "error" in r:
            rows.append([r["name"], what, settings, "failed", "", "", "", "", ""])
            continue
        curve = ", ".join(f"{k:.1f}" for _, k in r["curve"][1:])
        rows.append([r["name"], what, f"`{settings}`", minutes(r["wall_s"]), f"{r['knn_init']:.1f}",
                     f"{r['knn_final']:.1f}", f"{r['gain']:+.1f}", curve,
                     f"{r['img_per_s']:.0f}" if r["img_per_s"] else ""])
    return markdown_table(["candidate", "what it tries", "overrides on simclr/quickstart", "wall",
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
    ap.add_argument("--json", default=None, help="write the raw results here")
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
    print(f"{cores} CPU cores; candidates run one at a time: {' '.join(args.candidates)}",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="vissl_quickstart_") as tmp:
        workdir = Path(args.workdir or tmp)
        for name in args.candidates:
            load = os.getloadavg()[0]
            result = run_candidate(name, CANDIDATES[name][1], data, args.overrides, workdir)
            result["load_before"] = load
            results.append(result)
            if "error" in result:
                print(f"{name}: FAILED {result['error']}", flush=True)
            else:
                print(f"{name}: {minutes(result['wall_s'])}, kNN {result['knn_init']:.1f} -> "
                      f"{result['knn_final']:.1f} ({result['gain']:+.1f}); along the way "
                      f"{[k for _, k in result['curve']]}", flush=True)
    text = (f"`{command_line()}`; {cores} CPU cores, no GPU, one candidate at a time.\n\n"
            + table(results))
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.docs:
        write_docs(Path(args.docs), text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
