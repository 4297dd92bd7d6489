"""Small rough edges of issue 22 item 11: help defaults printed once, JSON numbers without float
noise, wandb's files kept in the run folder and quiet, TensorBoard beside wandb."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vissl_lite.cli import main
from vissl_lite.config import default_config
from vissl_lite.engine.logger import RunLogger, read_jsonl
from vissl_lite.numbers import tidy

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [["eval", "knn", "-h"], ["eval", "linear", "-h"], ["shard", "-h"]])
def test_help_states_each_default_once(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: imagefolder) (default" not in text
    assert not re.search(r"default[^()]*\)\s*\(default", text)
    if argv[0] == "eval":
        assert "(default: auto)" in text  # defaults the text does not state are still shown


def test_json_numbers_are_written_without_float_noise(tmp_path):
    noisy = 0.291 * 100  # a top-1 accuracy as a percentage
    assert noisy == 29.099999999999998 and tidy(noisy) == 29.1
    assert tidy({"a": [0.1 + 0.2, 1 / 3], "b": 7, "c": "x"}) == {"a": [0.3, 0.333333333333], "b": 7, "c": "x"}
    logger = RunLogger(tmp_path, default_config(overrides=["logger.wandb.mode=disabled"]).logger, {})
    logger.write({"step": 1, "knn_top1": noisy, "loss": 0.1 + 0.2})
    logger.close(plot=False)
    assert '"knn_top1": 29.1' in (tmp_path / "metrics.jsonl").read_text()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "knn_top1": 29.1, "loss": 0.3}]


def test_wandb_offline_keeps_its_files_in_the_run_folder_and_is_quiet(tmp_path):
    pytest.importorskip("wandb")
    code = textwrap.dedent(f"""
        from vissl_lite.config import default_config
        from vissl_lite.engine.logger import RunLogger
        logger = RunLogger({str(tmp_path / 'run')!r}, default_config(overrides=["logger.wandb.mode=offline"]).logger, {{}})
        assert logger.wandb is not None
        logger.write({{"step": 1, "loss": 1.5}})
        logger.close(plot=False)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"),
               PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wandb:" not in done.stdout + done.stderr
    home = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "home").rglob("*") if p.is_file())
    assert not [p for p in home if "wandb" in p], home
    assert list((tmp_path / "run" / "wandb" / "cache").rglob("core-debug-*.log"))
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_tensorboard_mirrors_every_logged_number(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed "
                                              "(pip install vissl_lite[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = default_config(overrides=["logger.wandb.mode=disabled", "logger.tensorboard=true"])
    logger = RunLogger(tmp_path, cfg.logger, {})
    logger.write({"type": "step", "step": 1, "loss": 2.5, "lr": 0.1})
    logger.write({"type": "step", "step": 2, "loss": 2.0, "lr": 0.05})
    logger.write({"type": "epoch", "step": 2, "knn_top1": 31.5})
    logger.close(plot=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["knn_top1", "loss", "lr"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 2.0)]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("knn_top1")] == [(2, 31.5)]
