"""Example pictures of a run: the scored input and a panel of input, truth and map."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from ..data import Sample
from ..detector import anomaly_map, image_scores
from .rows import ResultKey
from .settings import CLEAN


def example_figure(
    path: str | Path, image: np.ndarray, truth: np.ndarray | None, amap: np.ndarray, title: str
) -> None:
    """A panel of the scored input, its ground truth (if any) and its anomaly map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if truth is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.4))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=8)
    if truth is not None:
        axes[1].imshow(truth, cmap="gray")
        axes[1].set_title("ground truth", fontsize=8)
    shown = axes[-1].imshow(amap, cmap="inferno")
    axes[-1].set_title("anomaly map", fontsize=8)
    fig.colorbar(shown, ax=axes[-1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_examples(
    folder: Path,
    samples: Sequence[Sample],
    labels: np.ndarray,
    inputs: Sequence[Tensor],
    masks: Sequence[np.ndarray] | None,
    sizes: Sequence[tuple[int, int]],
    distances: Sequence[Tensor],
    unit: ResultKey,
    count: int,
) -> None:
    """For ``count`` test images (the first normal one and the first anomalous ones, as
    the paper's Figure 1b shows a normal image): the scored input as a PNG, its patch
    distance grid (.npy), a panel of input, ground truth and anomaly map, and an entry in
    the folder's ``index.json`` that the report reads."""
    folder.mkdir(parents=True, exist_ok=True)
    anomalous = [int(i) for i in np.flatnonzero(labels == 1)]
    normal = [int(i) for i in np.flatnonzero(labels == 0)][:1] if count > 1 else []
    index_path = folder / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else []
    for i in normal + anomalous[: count - len(normal)]:
        stem = Path(samples[i].image_id).with_suffix("").as_posix().replace("/", "_")
        tag = f"{stem}_{unit.condition}"
        if unit.condition != CLEAN:
            tag += f"_eps{unit.eps * 255:.3g}"
        img = (inputs[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"{tag}_input.png")
        score = float(image_scores(distances[i][None])[0])
        title = f"{samples[i].image_id} ({unit.condition}, score {score:.3f})"
        truth = masks[i] if masks is not None else None
        example_figure(
            folder / f"{tag}.png", img, truth, anomaly_map(distances[i], sizes[i]), title
        )
        np.save(folder / f"{tag}_map.npy", distances[i].detach().float().cpu().numpy())
        entry = {
            "image": samples[i].image_id,
            "label": int(labels[i]),
            "condition": unit.condition,
            "eps": unit.eps,
            "shots": unit.shots,
            "score": score,
            "input": f"{tag}_input.png",
            "map": f"{tag}_map.npy",
        }
        index = [e for e in index if e["input"] != entry["input"]] + [entry]
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
