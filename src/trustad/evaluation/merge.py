"""Combine run folders (shards, or the parts of a distributed run) into one run folder.

Folders are combined only when they computed the same thing: equal settings apart from how
the work was split and run (``MERGE_FREE``) and weights with the same sha256. The merged
folder is an ordinary run folder (no shard), so a plain rerun into it finishes whatever no
folder had.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .settings import MERGE_FREE, EvaluationSettings
from .store import KEY_COLUMNS, ResultStore, read_csv, row_key, unique_rows


def read_run(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder: no run.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a trustad run file: {exc}") from exc
    if not isinstance(data, dict) or "settings" not in data:
        raise ValueError(f"{path} is not a trustad run file: no settings")
    return data


def check_compatible(runs: dict[Path, dict[str, Any]]) -> None:
    """Refuse folders whose settings (other than ``MERGE_FREE``) or weights differ."""
    (first, ref), *others = runs.items()
    for folder, run in others:
        a, b = ref["settings"], run["settings"]
        differ = sorted(k for k in set(a) | set(b) if k not in MERGE_FREE and a.get(k) != b.get(k))
        if differ:
            details = "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in differ)
            raise ValueError(f"{folder} and {first} hold runs with other settings ({details})")
        wa, wb = (r.get("weights") or {} for r in (ref, run))
        if wa.get("sha256") != wb.get("sha256"):
            raise ValueError(
                f"{folder} and {first} were computed with other weights (sha256 "
                f"{str(wb.get('sha256'))[:12]} vs {str(wa.get('sha256'))[:12]})"
            )


def folder_rows(folder: str | Path) -> tuple[list[dict], dict[tuple, list[dict]]]:
    """The whole result rows of a run folder and its score rows grouped by unit key."""
    folder = Path(folder)
    results = [r for r in read_csv(folder / "results.csv") if None not in r.values()]
    results = unique_rows(results)
    done = {row_key(r) for r in results}
    scores: dict[tuple, list[dict]] = defaultdict(list)
    for r in unique_rows(
        (r for r in read_csv(folder / "scores.csv") if None not in r.values()), extra=("image",)
    ):
        key = row_key(r)
        if key in done:
            scores[key].append(r)
    return results, scores


def absorb(store: ResultStore, folder: str | Path) -> int:
    """Add to ``store`` every unit of ``folder`` it does not hold; returns how many."""
    results, scores = folder_rows(folder)
    added = 0
    for r in results:
        key = row_key(r)
        if not store.done(*(r[c] for c in KEY_COLUMNS)):
            store.add([r], scores.get(key, []))
            added += 1
    return added


def copy_examples(source: str | Path, out: str | Path) -> None:
    """Example pictures of ``source`` into ``out/examples``, index entries merged."""
    for index in Path(source).glob("examples/*/index.json"):
        target = Path(out) / "examples" / index.parent.name
        target.mkdir(parents=True, exist_ok=True)
        entries = json.loads(index.read_text())
        have_path = target / "index.json"
        have = json.loads(have_path.read_text()) if have_path.exists() else []
        names = {e["input"] for e in have}
        for f in index.parent.iterdir():
            if f.name != "index.json" and not (target / f.name).exists():
                shutil.copy2(f, target / f.name)
        have += [e for e in entries if e["input"] not in names]
        have_path.write_text(json.dumps(have, indent=1))


def merge_runs(folders: Sequence[str | Path], out: str | Path) -> ResultStore:
    """Merge run folders into ``out`` (created, or resumed when it holds the same run)."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise ValueError("nothing to merge: give at least one run folder")
    out = Path(out)
    if any(f.resolve() == out.resolve() for f in folders):
        raise ValueError(f"the merged folder {out} must not be one of the folders merged")
    runs = {f: read_run(f) for f in folders}
    check_compatible(runs)
    first = runs[folders[0]]
    settings = EvaluationSettings.from_dict({**first["settings"], "shard": None})
    store = ResultStore(out, settings)
    if first.get("weights"):
        store.record_weights(first["weights"])
    for name in ("protocol",):
        if first.get(name):
            store.record(name, first[name])
    store.record("merged_from", [str(f) for f in folders])
    for f in folders:
        absorb(store, f)
        copy_examples(f, out)
    return store
