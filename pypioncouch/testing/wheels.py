"""Real, tiny, deterministic distributions for the simulator: pip and uv install them.

A wheel holds ``<module>/__init__.py`` and a ``.dist-info`` whose ``METADATA`` names the
project, version, Requires-Python and the Requires-Dist it is given (the simulator gives
those of releases published with ``requires_dist=``: the generated data sets' random
requirements name projects the simulator does not have, so their wheels declare none); the same inputs always give the same bytes (fixed
zip timestamps), so digests computed for a listing match the file served later.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache

_FIXED_TIME = (2020, 2, 2, 0, 0, 0)


def wheel_name_part(name: str) -> str:
    """The distribution name as a wheel filename spells it (PEP 427/491)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_filename(name: str, version: str, tag: str = "py3-none-any") -> str:
    return f"{wheel_name_part(name)}-{version}-{tag}.whl"


def core_metadata(name: str, version: str, requires_python: str | None,
                  summary: str | None = None, requires_dist: tuple[str, ...] = ()) -> bytes:
    """The METADATA file (PEP 566/643), also served as the PEP 658 ``.metadata`` file."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if summary:
        lines.append("Summary: " + " ".join(summary.split()))
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {requirement}" for requirement in requires_dist]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(name: str, version: str, requires_python: str | None = None,
                summary: str | None = None, tag: str = "py3-none-any",
                requires_dist: tuple[str, ...] = ()) -> bytes:
    """The bytes of a valid pure-Python wheel."""
    module = wheel_name_part(name)
    dist_info = f"{module}-{version}.dist-info"
    files = [
        (f"{module}/__init__.py", f"__version__ = {version!r}\n".encode()),
        (f"{dist_info}/METADATA", core_metadata(name, version, requires_python, summary,
                                                requires_dist)),
        (f"{dist_info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: pypioncouch-simulator\n"
                                f"Root-Is-Purelib: true\nTag: {tag}\n").encode()),
    ]
    record = "\n".join([_record_line(p, d) for p, d in files] + [f"{dist_info}/RECORD,,"])
    files.append((f"{dist_info}/RECORD", (record + "\n").encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path, data in files:
            archive.writestr(zipfile.ZipInfo(path, _FIXED_TIME), data)
    return buffer.getvalue()


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha256: str
    blake2b_256: str
    metadata_sha256: str


@lru_cache(maxsize=200_000)
def wheel_digests(name: str, version: str, requires_python: str | None,
                  summary: str | None, tag: str = "py3-none-any",
                  requires_dist: tuple[str, ...] = ()) -> Digests:
    """Size and digests of :func:`build_wheel` for these inputs (cached)."""
    data = build_wheel(name, version, requires_python, summary, tag, requires_dist)
    metadata = core_metadata(name, version, requires_python, summary, requires_dist)
    return Digests(len(data), hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest(),
                   hashlib.blake2b(data, digest_size=32).hexdigest(),
                   hashlib.sha256(metadata).hexdigest())
