"""Scores of trustad next to those of the public AnomalyDINO code, on the same backbone.

    git clone https://github.com/dammsi/AnomalyDINO /path/to/AnomalyDINO
    .venv/bin/pip install faiss-cpu tqdm tifffile
    .venv/bin/python scripts/compare_reference.py --reference /path/to/AnomalyDINO \\
        --root DATASET --category brick [--shots 1] [--seed 0] [--masking]

The reference code runs unchanged (its ``run_anomaly_detection``, rotation augmentation,
faiss 1-NN, ``mean_top1p`` and ``dists2map``), with trustad's backbone behind
``torch.hub.load`` and a small stand-in for the two torchvision pieces it uses (PIL's
bicubic resize of the smaller edge, ToTensor, Normalize; torchvision does exactly this for
PIL images). trustad runs with ``mask_morphology="flat"``, the reference code's masking.
Prints the largest score and anomaly-map differences over the category's test images.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types

import numpy as np
import torch
from PIL import Image

import trustad
from trustad.detector import AnomalyDINO

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def install_torchvision_stand_in() -> None:
    """The torchvision names the reference code imports, for PIL images only."""

    class InterpolationMode:
        BICUBIC = Image.BICUBIC

    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    class Resize:  # smaller edge to ``size``, the other edge truncated as torchvision does
        def __init__(self, size, interpolation, antialias=True):
            self.size, self.interpolation = size, interpolation

        def __call__(self, img):
            w, h = img.size
            if w <= h:
                return img.resize((self.size, int(self.size * h / w)), self.interpolation)
            return img.resize((int(self.size * w / h), self.size), self.interpolation)

    class ToTensor:
        def __call__(self, img):
            return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)

    class Normalize:
        def __init__(self, mean, std):
            self.mean = torch.tensor(mean)[:, None, None]
            self.std = torch.tensor(std)[:, None, None]

        def __call__(self, x):
            return (x - self.mean) / self.std

    transforms = types.ModuleType("torchvision.transforms")
    for cls in (InterpolationMode, Compose, Resize, ToTensor, Normalize):
        setattr(transforms, cls.__name__, cls)
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    torchvision.models = types.ModuleType("torchvision.models")
    sys.modules.update(
        {
            "torchvision": torchvision,
            "torchvision.transforms": transforms,
            "torchvision.models": torchvision.models,
        }
    )


def install_hub_model(backbone: torch.nn.Module) -> None:
    """``torch.hub.load('facebookresearch/dinov2', ...)`` returns trustad's backbone."""

    class HubModel:
        patch_size = 14

        def eval(self):
            return self

        def to(self, device):
            return self

        def get_intermediate_layers(self, x):
            features = backbone.patch_features(x * STD + MEAN)  # trustad normalises inside
            return (features.reshape(features.shape[0], -1, features.shape[-1]),)

    torch.hub.load = lambda *args, **kwargs: HubModel()
    torch.cuda.synchronize = lambda *args, **kwargs: None  # the reference times on CUDA


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", required=True, help="checkout of dammsi/AnomalyDINO")
    parser.add_argument("--root", required=True, help="dataset root in the MVTec layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--masking", action="store_true", help="mask test images")
    args = parser.parse_args()

    backbone = trustad.load_backbone()
    install_torchvision_stand_in()
    install_hub_model(backbone)
    sys.path.insert(0, args.reference)
    from src.backbones import DINOv2Wrapper
    from src.detection import run_anomaly_detection
    from src.utils import dists2map

    folder = f"{args.root}/{args.category}"
    defects = [d for d in sorted(os.listdir(f"{folder}/test")) if d != "good"]
    model = DINOv2Wrapper("dinov2_vits14", "cpu", args.resolution)
    with tempfile.TemporaryDirectory() as out:
        ref_scores, _, _ = run_anomaly_detection(
            model,
            args.category,
            args.root,
            args.shots,
            {args.category: defects},
            out,
            masking=args.masking,
            rotation=True,
            knn_metric="L2_normalized",
            faiss_on_cpu=True,
            seed=args.seed,
            save_patch_dists=True,
        )
        grids = {
            k: np.load(
                f"{out}/anomaly_maps/seed={args.seed}/{args.category}/test/{k.split('.')[0]}.npy"
            )
            for k in ref_scores
        }

    train = sorted(os.listdir(f"{folder}/train/good"))
    support = train[args.seed * args.shots : (args.seed + 1) * args.shots]
    det = AnomalyDINO(
        backbone,
        resolution=args.resolution,
        rotate=True,
        mask_test=args.masking,
        mask_morphology="flat",
    ).fit([f"{folder}/train/good/{name}" for name in support])
    keys = sorted(ref_scores)
    paths = [f"{folder}/test/{k}" for k in keys]
    ours = det.score(paths)
    ref = np.array([ref_scores[k] for k in keys])
    map_diff = max(
        float(np.abs(m - dists2map(grids[k].astype(np.float32), m.shape)).max())
        for m, k in zip(det.anomaly_maps(paths), keys)
    )
    print(
        f"{args.category}, {args.shots} shot(s), seed {args.seed}, masking {args.masking}: "
        f"{len(keys)} images, scores {ref.min():.4f}..{ref.max():.4f}; "
        f"largest score difference {np.abs(ours - ref).max():.2e}, "
        f"largest anomaly-map difference {map_diff:.2e}"
    )


if __name__ == "__main__":
    main()
