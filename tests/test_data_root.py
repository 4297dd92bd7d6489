"""A data.root the user gives is read, never created or downloaded into by mistake (issue 22:
a typo in data.root downloaded CIFAR-10 into the typo; a folder of images got a CIFAR download)."""
import pytest
import torchvision
from PIL import Image

from vissl_lite.cli import main
from vissl_lite.data import build_dataset
from vissl_lite.errors import DataError


def test_a_root_that_does_not_exist_is_an_error_and_nothing_is_created(tmp_path, capsys):
    typo = tmp_path / "cifar10-jepg"
    assert main(["pretrain", "simclr/quickstart", f"data.root={typo}", "data.download=true",
                 f"output_dir={tmp_path / 'run'}", "logger.wandb.mode=disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"vissl-lite: error: data.root does not exist: {typo}; fix the path "
                                f"(nothing was created), or leave data.root unset to use "
                                f"{err.split('unset to use ')[1]}"]
    assert not typo.exists()


def _images(folder, n):
    for i in range(n):
        path = folder / f"album{i % 2}" / f"img{i}.JPG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 0, 0)).save(path, format="JPEG")


def test_a_folder_of_images_given_to_a_cifar_preset_says_what_it_found(tmp_path):
    _images(tmp_path, 3)
    with pytest.raises(DataError) as e:
        build_dataset({"name": "cifar10", "root": str(tmp_path), "download": True})
    assert str(e.value) == (f"data.root={tmp_path} holds 3 images, no CIFAR-10 "
                            f"(cifar-10-batches-py/); add data.name=folder to train on them (unlabelled)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["album0", "album1"]  # nothing downloaded
    assert len(build_dataset({"name": "folder", "root": str(tmp_path)})) == 3  # the fix works


def test_download_goes_only_into_an_empty_folder(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:
        url = "https://example.invalid/cifar-10-python.tar.gz"

        def __init__(self, root, transform=None, download=False, train=True):
            calls.append((root, download))
            self.classes = []

        def __len__(self):
            return 0

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty, so nothing is downloaded into it"):
        build_dataset({"name": "cifar10", "root": str(tmp_path), "download": True})
    assert calls == []
    empty = tmp_path / "empty"
    empty.mkdir()
    build_dataset({"name": "cifar10", "root": str(empty), "download": True})
    assert calls == [(str(empty), True)]
