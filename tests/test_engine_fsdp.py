"""FSDP2 (``train.strategy=fsdp``) on 2 CPU processes (gloo, torchrun) equals DDP on 2, and its
sharded (DCP) checkpoints resume on 2 ranks and on 1.

Two methods with an EMA teacher, so that the teacher's shards must line up with the student's:
DINO on a ViT (2 transformer blocks: one FSDP unit each, the encoder, the root; DINO's center is
all-reduced) and BYOL on a ResNet (one unit per stage). After a few steps the logged losses and
gradient norms and every parameter (gathered to full tensors) match DDP's up to float32 rounding;
BYOL also runs with ``train.grad_clip`` (the sharded gradient norm is one all-reduce of the
shards' squared norms) and SGD (AdamW turns the rounding noise of gradients that are ~0 into
full-size updates: it would compare rounding, not FSDP). Then a DINO run writes DCP checkpoints at steps 2 and 4; resumed from
step 2 on 2 ranks (torchrun) and on 1 process (this one), step 3 and 4 log the same loss as
the uninterrupted run, and the checkpoint reads back into a plain state dict.

One ``torchrun --standalone --nproc_per_node 2`` launch runs this file as a script.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _toy
from torchvision.models.resnet import BasicBlock

from vissl_lite.backbones.resnet import ResNet
from vissl_lite.backbones.vit import ViT
from vissl_lite.registry import BACKBONES

HERE = Path(__file__).resolve()
STEPS = 4
COMMON = [f"train.max_steps={STEPS}", "optim.warmup_epochs=0", "optim.name=adamw",
          "optim.lr=0.01", "optim.weight_decay=0.05", "checkpoint.every_epochs=0",
          "checkpoint.save_best=false", "checkpoint.every_minutes=0"]
CASES = {
    "dino_vit": ("dino", ["method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16",
                          "method.num_local_crops=0", "method.warmup_teacher_temp_epochs=0",
                          "method.momentum_teacher=0.9", "backbone.name=vit_fsdp_test"]),
    "byol_resnet": ("byol", ["method.proj_hidden_dim=32", "method.proj_output_dim=16",
                             "method.pred_hidden_dim=32", "method.momentum_tau=0.9",
                             "train.grad_clip=0.5", "optim.name=sgd", "optim.lr=0.05"]),
}


@BACKBONES.register("vit_fsdp_test", help="a 2-block ViT on 8x8 images (FSDP tests)")
def vit_fsdp_test() -> ViT:
    return ViT(patch_size=4, embed_dim=24, depth=2, num_heads=2, img_size=8, name="vit_fsdp_test")


def _backbone(method_name: str):
    if method_name == "dino":
        return vit_fsdp_test()
    return ResNet(BasicBlock, (1, 1, 1, 1), cifar_stem=True, name="resnet10_test")


def _config(case: str, output_dir: Path, *overrides: str):
    from vissl_lite.config import default_config
    method_name, extra = CASES[case]
    return method_name, default_config(method_name, [*_toy.BASE, *COMMON, *extra,
                                                     f"output_dir={output_dir}", *overrides])


def _fit(case: str, output_dir: Path, *overrides: str):
    from vissl_lite.engine import Trainer
    from vissl_lite.registry import METHODS
    method_name, cfg = _config(case, output_dir, *overrides)
    torch.manual_seed(cfg.seed)
    method = METHODS.get(method_name)(_backbone(method_name), cfg.method)
    Trainer(cfg, method=method, dataset=_toy.ToyImages(64), transform=_toy.toy_views).fit()
    return method


def _full_params(method) -> dict:
    """Every parameter as a full tensor (DTensors all-gathered; a collective under FSDP)."""
    from torch.distributed.tensor import DTensor
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in method.named_parameters()}


def run_ranks(out: Path) -> None:
    """Under torchrun: each case with DDP and with FSDP; the DCP resume on 2 ranks."""
    from torch.distributed.tensor import DTensor
    rank = int(os.environ["RANK"])
    for case in CASES:
        for strategy in ("ddp", "fsdp"):
            folder = out / f"{case}_{strategy}"
            method = _fit(case, folder, f"train.strategy={strategy}")
            params = _full_params(method)
            if rank == 0:
                sharded = any(isinstance(p, DTensor) for p in method.parameters())
                torch.save({"params": params, "sharded": sharded}, folder / "params.pt")
    _fit("dino_vit", out / "dcp_full", "train.strategy=fsdp", "checkpoint.every_steps=2",
         "checkpoint.keep_last=3")
    resumed = out / "dcp_resume2"
    if rank == 0:
        _copy_step_2(out / "dcp_full", resumed)
    torch.distributed.barrier()
    _fit("dino_vit", resumed, "train.strategy=fsdp", "resume=auto")


def _copy_step_2(source: Path, target: Path) -> None:
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / "step_0000002.dcp",
                    target / "checkpoints" / "step_0000002.dcp")
    os.symlink("step_0000002.dcp", target / "checkpoints" / "last.dcp")
    shutil.copyfile(source / "metrics.jsonl", target / "metrics.jsonl")


def _steps(folder: Path):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in records if r["type"] == "step"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE), str(root)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert res.returncode == 0, f"torchrun failed ({res.returncode}):\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-6000:]}"
    (root / "torchrun.log").write_text(res.stdout + res.stderr)
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_equals_ddp_on_two_ranks(runs, case):
    ddp, fsdp = (torch.load(runs / f"{case}_{s}" / "params.pt") for s in ("ddp", "fsdp"))
    assert fsdp["sharded"] and not ddp["sharded"]
    ddp_log, fsdp_log = _steps(runs / f"{case}_ddp"), _steps(runs / f"{case}_fsdp")
    assert sorted(ddp_log) == sorted(fsdp_log) == list(range(1, STEPS + 1))
    for step, (loss, grad_norm) in ddp_log.items():
        assert fsdp_log[step][0] == pytest.approx(loss, rel=1e-5), f"loss at step {step}"
        assert fsdp_log[step][1] == pytest.approx(grad_norm, rel=1e-4), f"norm at step {step}"
    assert ddp["params"].keys() == fsdp["params"].keys()
    teacher = [k for k in ddp["params"] if "teacher" in k or "target" in k]
    assert teacher, "the EMA teacher is compared too"
    for name, value in ddp["params"].items():
        torch.testing.assert_close(fsdp["params"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_sharded_checkpoint_holds_every_ranks_shard_and_reads_back_whole(runs):
    from vissl_lite.engine import load_checkpoint
    folder = runs / "dcp_full" / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*.dcp")) == ["step_0000002.dcp",
                                                                  "step_0000004.dcp"]
    assert os.readlink(folder / "last.dcp") == "step_0000004.dcp"
    assert sorted(p.name for p in (folder / "step_0000004.dcp").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]
    assert not list(folder.glob(".*tmp*"))
    ckpt = load_checkpoint(runs / "dcp_full")
    final = torch.load(runs / "dino_vit_fsdp" / "params.pt")["params"]
    assert ckpt["step"] == STEPS and ckpt["world_size"] == 2
    for name, value in final.items():   # the same run as dino_vit_fsdp, as written
        torch.testing.assert_close(ckpt["model"][name], value, rtol=0, atol=0, msg=name)


def test_export_and_load_backbone_read_a_sharded_checkpoint(runs, tmp_path):
    from safetensors.torch import load_file

    from vissl_lite.export import export_backbone, load_backbone
    final = torch.load(runs / "dino_vit_fsdp" / "params.pt")["params"]
    teacher = {k[len("teacher_backbone."):]: v for k, v in final.items()
               if k.startswith("teacher_backbone.")}
    backbone = load_backbone(runs / "dcp_full" / "checkpoints" / "step_0000004.dcp")
    export_backbone(runs / "dcp_full", "safetensors", tmp_path / "vit.safetensors")
    exported = load_file(tmp_path / "vit.safetensors")
    for name, value in teacher.items():   # DINO evaluates its teacher
        assert torch.equal(backbone.state_dict()[name], value), name
        assert torch.equal(exported[name], value), name


def test_a_sharded_checkpoint_resumes_on_two_ranks_and_on_one(runs, tmp_path):
    full = _steps(runs / "dcp_full")
    resumed2 = _steps(runs / "dcp_resume2")
    one = tmp_path / "resume1"
    _copy_step_2(runs / "dcp_full", one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit("dino_vit", one, "train.strategy=fsdp", "resume=auto")
    finally:
        torch.set_num_threads(threads)
    resumed1 = _steps(one)
    for step in (3, 4):
        assert resumed2[step][0] == pytest.approx(full[step][0], rel=1e-6), f"2 ranks, step {step}"
        assert resumed1[step][0] == pytest.approx(full[step][0], rel=1e-5), f"1 rank, step {step}"
    assert (one / "checkpoints" / "step_0000004.dcp" / "__0_0.distcp").is_file()


def test_auto_picks_fsdp_above_the_stated_size_on_several_ranks_and_a_method_may_refuse_it():
    from vissl_lite.engine.sharding import AUTO_FSDP_MIN_PARAMS, resolve_strategy
    from vissl_lite.errors import ConfigError

    class Big(torch.nn.Module):
        fsdp_unsupported = ""

        def __init__(self, n):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(n, device="meta"))

    assert resolve_strategy("auto", Big(AUTO_FSDP_MIN_PARAMS + 1), world=2) == "fsdp"
    assert resolve_strategy("auto", Big(AUTO_FSDP_MIN_PARAMS + 1), world=1) == "ddp"
    assert resolve_strategy("auto", Big(AUTO_FSDP_MIN_PARAMS), world=8) == "ddp"
    Big.fsdp_unsupported = "its loss reads whole parameters outside forward"
    with pytest.raises(ConfigError, match="Big cannot train under train.strategy=fsdp: its loss"):
        resolve_strategy("fsdp", Big(4), world=2)


def test_shard_units_are_blocks_and_resnet_stages_children_first_root_last():
    from vissl_lite.engine.sharding import shard_units
    method = torch.nn.Module()
    method.backbone, method.resnet = vit_fsdp_test(), _backbone("byol")
    units = shard_units(method)
    names = {id(m): n for n, m in method.named_modules()}
    assert [names[id(u)] for u in units] == [
        "backbone.blocks.0", "backbone.blocks.1", "resnet.layer1", "resnet.layer2",
        "resnet.layer3", "resnet.layer4", ""]


if __name__ == "__main__":   # one rank under torchrun: python -m torch.distributed.run ... OUT
    torch.set_num_threads(1)
    run_ranks(Path(sys.argv[1]))
