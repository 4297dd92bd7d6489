"""SSLMem: memorisation of individual training images by an SSL encoder (Wang et al., ICLR 2024,
arXiv 2401.12233).

An encoder f trained on a set S that contains the candidate x, and an encoder g trained the same
way on S without x. The alignment loss of an encoder h on x is the mean distance between the
L2-normalised representations of augmented views of x:

    L_align(h, x) = E_{x', x'' ~ Aug(x)} || h(x') / ||h(x')|| - h(x'') / ||h(x'')|| ||_2

estimated here over all pairs of ``num_views`` views (the same views for both encoders). The
memorisation score is how much better f aligns x than g does:

    SSLMem(x) = L_align(g, x) - L_align(f, x)

and, as in the paper's code, the scores of a candidate set are normalised by their range,
``SSLMem(x) / (max_x SSLMem - min_x SSLMem)``, so they compare across encoders (a constant set of
scores normalises to 0). A typical image that both encoders learned to embed scores near 0;
an atypical one that f had to memorise scores high. f = g gives exactly 0 for every image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.features import extract_features
from vissl_lite.registry import EVALUATORS
from vissl_lite.data.image import IMG_EXTENSIONS, is_image_file
from vissl_lite.eval.cluster import augmented_views
from vissl_lite.data.image import load_rgb
from vissl_lite.eval.plots import histogram, image_grid


def alignment_per_image(features: torch.Tensor) -> torch.Tensor:
    """Mean pairwise distance between the normalised views: features (N, V, D) -> (N,)."""
    if features.ndim != 3 or features.shape[1] < 2:
        raise EvalError(f"SSLMem needs (images, views >= 2, dim) features, got {tuple(features.shape)}")
    z = F.normalize(features.double(), dim=-1)
    dist = torch.cdist(z, z)                                   # (N, V, V)
    v = z.shape[1]
    return dist.sum((1, 2)) / (v * (v - 1))


def sslmem_scores(views: torch.Tensor, encoder_with: nn.Module, encoder_without: nn.Module,
                  batch_size: int = 256, device=None, precision: str = "auto") -> Dict[str, torch.Tensor]:
    """SSLMem of each image from its augmented views (N, V, 3, H, W), normalised as above.

    Returns ``{"score": normalised (N,), "raw": L_g - L_f (N,), "align_with": L_f, "align_without": L_g}``.
    """
    if views.ndim != 5 or views.shape[1] < 2:
        raise EvalError(f"SSLMem needs views of shape (N, V >= 2, 3, H, W), got {tuple(views.shape)}")
    n, v = views.shape[:2]
    flat = views.reshape(n * v, *views.shape[2:])
    kw = dict(batch_size=batch_size, device=device, precision=precision, progress=True)
    f = extract_features(encoder_with, flat, **kw)[0].view(n, v, -1)
    g = extract_features(encoder_without, flat, **kw)[0].view(n, v, -1)
    align_f, align_g = alignment_per_image(f), alignment_per_image(g)
    return {"score": normalise_scores(align_g - align_f), "raw": align_g - align_f,
            "align_with": align_f, "align_without": align_g}


def normalise_scores(raw: torch.Tensor) -> torch.Tensor:
    """raw / (max - min) over the candidate set (zeros when all scores are equal)."""
    spread = raw.max() - raw.min()
    return raw / spread if spread > 0 else torch.zeros_like(raw)


def read_candidates(spec: str, dataset_len: int) -> List[int]:
    """Candidate indices into the train split: a text file of integers (whitespace/comma/newline
    separated, '#' comments), or ``A:B`` for the range A..B-1."""
    if ":" in spec and not Path(spec).exists():
        start, stop = spec.split(":", 1)
        try:
            idx = list(range(int(start or 0), int(stop or dataset_len)))
        except ValueError:
            raise EvalError(f"--candidates {spec}: a range must look like 0:500") from None
    else:
        path = Path(spec)
        if not path.is_file():
            raise EvalError(f"--candidates {spec}: no such file; give a text file of train-split "
                            f"indices, a range like 0:500, or a folder of images")
        text = " ".join(line.split("#")[0] for line in path.read_text().splitlines())
        try:
            idx = [int(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise EvalError(f"--candidates {spec}: expected integers (indices into the train split)") from None
    bad = [i for i in idx if not 0 <= i < dataset_len]
    if not idx or bad:
        raise EvalError(f"--candidates {spec}: {'no indices' if not idx else f'index {bad[0]} outside'} "
                        f"the train split of {dataset_len} images")
    return idx


def folder_images(folder: str) -> List[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p.name))
    if not files:
        raise EvalError(f"--candidates {folder}: a folder without images ({', '.join(IMG_EXTENSIONS)})")
    return files


def _stack_views(images: Sequence, views: Callable, num_views: int) -> torch.Tensor:
    """(N, num_views, 3, H, W): ``num_views`` views of each PIL image (calls of ``views``)."""
    out = []
    for img in images:
        made: List[torch.Tensor] = []
        while len(made) < num_views:
            made.extend(views(img))
        out.append(torch.stack(made[:num_views]))
    return torch.stack(out)


@EVALUATORS.register("sslmem", help="SSLMem: memorisation score of candidate images from a "
                                    "checkpoint trained with them and one without")
class SSLMemEvaluator(Evaluator):
    """SSLMem of the ``--candidates`` images (train-split indices, or a folder of images)."""

    positionals = (("checkpoint", "checkpoint (or run folder) trained WITH the candidates"),
                   ("checkpoint_without", "checkpoint (or run folder) trained WITHOUT them"))
    function = staticmethod(sslmem_scores)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("sslmem")
        g.add_argument("--candidates", required=True,
                       help="a text file of train-split indices, a range A:B of them, or a folder "
                            "of candidate images")
        g.add_argument("--views", type=int, default=8, help="augmented views per image")
        g.add_argument("--top", type=int, default=16, help="images in the top-scored grid")

    def run(self, ctx: EvalContext) -> EvalResult:
        a = ctx.args
        if a.views < 2:
            raise EvalError("--views must be at least 2 (alignment compares views)")
        views, recipe = augmented_views(ctx)
        if Path(a.candidates).is_dir():
            files = folder_images(a.candidates)
            images, names = [load_rgb(str(p)) for p in files], [str(p) for p in files]
        else:
            train = ctx.dataset("train", transform=lambda img: img, subset=0)
            idx = read_candidates(a.candidates, len(train))
            images, names = [train[i][0] for i in idx], [str(i) for i in idx]
        torch.manual_seed(a.seed)
        stacked = _stack_views(images, views, a.views)
        without, _ = ctx.load_encoder(a.checkpoint_without)
        res = sslmem_scores(stacked, ctx.encoder, without.to(ctx.device).eval(),
                            batch_size=a.batch_size, device=ctx.device, precision=a.precision)
        score = res["score"]
        order = score.argsort(descending=True).tolist()
        metrics = {"candidates": len(score), "views": a.views, "mean_score": float(score.mean()),
                   "median_score": float(score.median()), "max_score": float(score.max()),
                   "mean_raw": float(res["raw"].mean()),
                   "mean_align_with": float(res["align_with"].mean()),
                   "mean_align_without": float(res["align_without"].mean())}
        rows = [{"candidate": names[i], "score": float(score[i]), "raw": float(res["raw"][i])}
                for i in order]
        out = EvalResult(metrics, tables={"top-scored candidates": rows[:a.top]},
                         extra={"view_recipe": recipe, "checkpoint_without": a.checkpoint_without,
                                "scores": rows})
        hist, grid = ctx.figure_path("sslmem_hist.png"), ctx.figure_path("sslmem_top.png")
        if hist is not None:
            out.figures["histogram of the normalised SSLMem scores"] = histogram(
                hist, score.tolist(), "SSLMem (normalised)", f"SSLMem of {len(score)} candidates")
            top = order[:a.top]
            pics = torch.stack([_as_tensor(images[i], ctx.image_size) for i in top])
            out.figures[f"the {len(top)} top-scored candidates"] = image_grid(
                grid, pics, [f"{names[i][-12:]}: {float(score[i]):.2f}" for i in top],
                "highest SSLMem")
        return out


def _as_tensor(img, size: int) -> torch.Tensor:
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True)])(img)
