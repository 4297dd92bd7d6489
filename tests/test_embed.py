"""``vissl-lite embed``: one row per image in a stable order, with its path, in each format,
equal to the encoder's own features, and resumable (the chunks written are skipped)."""
from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from vissl_lite.cli import main
from vissl_lite.eval import embed as embed_module
from vissl_lite.eval.embed import read_embeddings
from vissl_lite.eval.transforms import card_transform
from vissl_lite.backbones.specs import resolve_encoder

SPEC = "timm:test_resnet.r160_in1k"


@pytest.fixture
def folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    for i, rel in enumerate(["b/2.png", "a/1.jpg", "a/sub/3.png", "c.PNG", "a/0.png"]):
        path = tmp_path / "imgs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (24 + i, 30, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(path, format="PNG" if rel.lower().endswith("png") else "JPEG")
    model = timm.create_model("test_resnet.r160_in1k", pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    return tmp_path


def run(folder, out, *extra):
    return main(["embed", SPEC, "--weights", str(folder / "w.safetensors"), "--data",
                 str(folder / "imgs"), "--out", str(out), "--batch-size", "2", "--chunk", "2",
                 "--num-workers", "0", "--device", "cpu", "--quiet", *extra])


EXPECTED = ["a/0.png", "a/1.jpg", "a/sub/3.png", "b/2.png", "c.PNG"]


def test_rows_paths_and_values(folder, capsys):
    assert run(folder, folder / "e.npy") == 0
    emb, paths = read_embeddings(folder / "e.npy")
    assert paths == EXPECTED and emb.shape == (5, 96) and emb.dtype == np.float32
    encoder = resolve_encoder(SPEC, weights=str(folder / "w.safetensors"))
    batch = torch.stack([card_transform(encoder.card)(Image.open(folder / "imgs" / p).convert("RGB"))
                         for p in paths])
    with torch.no_grad():
        assert np.allclose(emb, encoder(batch).numpy(), atol=1e-5)
    assert "wrote 5 embeddings (96-d)" in capsys.readouterr().out
    assert run(folder, folder / "e.safetensors") == 0
    emb2, paths2 = read_embeddings(folder / "e.safetensors")
    assert paths2 == paths and np.array_equal(emb2, emb)
    assert not (folder / "e.npy.parts").exists()

    with tarfile.open(folder / "imgs.tar", "w") as tar:
        tar.add(folder / "imgs", arcname="imgs")
    assert main(["embed", SPEC, "--weights", str(folder / "w.safetensors"), "--data",
                 str(folder / "imgs.tar"), "--out", str(folder / "t.npy"), "--num-workers", "0",
                 "--device", "cpu", "--quiet"]) == 0
    emb3, paths3 = read_embeddings(folder / "t.npy")
    assert paths3 == [f"imgs/{p}" for p in EXPECTED] and np.allclose(emb3, emb, atol=1e-6)


def test_resumes_after_an_interruption(folder, monkeypatch, capsys):
    calls = []
    real = embed_module.extract_features

    def dies_on_the_second_chunk(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(embed_module, "extract_features", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run(folder, folder / "e.npy")
    assert sorted(os.listdir(folder / "e.npy.parts")) == ["manifest.json", "part_0000000000.npy"]
    monkeypatch.setattr(embed_module, "extract_features", real)
    assert run(folder, folder / "e.npy") == 0
    assert "(1 chunks already written)" in capsys.readouterr().out
    resumed, paths = read_embeddings(folder / "e.npy")
    assert run(folder, folder / "fresh.npy") == 0
    assert np.array_equal(resumed, read_embeddings(folder / "fresh.npy")[0])

    (folder / "x.npy.parts").mkdir()
    (folder / "x.npy.parts" / "manifest.json").write_text('{"encoder": "other"}')
    assert run(folder, folder / "x.npy") == 2
    assert "holds a partial embedding made with another encoder" in capsys.readouterr().err


def test_parquet_needs_pyarrow_or_writes(folder, capsys):
    code = run(folder, folder / "e.parquet")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert code == 2 and "needs pyarrow (pip install pyarrow)" in capsys.readouterr().err
        return
    assert code == 0
    emb, paths = read_embeddings(folder / "e.parquet")
    assert paths == EXPECTED and emb.shape == (5, 96)
