"""Release tarballs of the sample app, built byte-for-byte reproducibly."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

SAMPLE_APP = Path(__file__).resolve().parent / "sample_app" / "app.py"
_MTIME = 946684800  # 2000-01-01: fixed, so the same inputs give the same digest


def _member(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = _MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info, data


def build_sample_artifact(version: str, dest_dir: Path) -> Path:
    """``dest_dir/sample-app-<version>.tar.gz`` holding ``app.py`` and ``VERSION``.

    Entries are sorted, owned by uid 0 and dated 2000-01-01, and the gzip
    header carries no name or time, so one version always has one digest.
    """
    members = sorted(
        [
            _member("VERSION", f"{version}\n".encode(), 0o644),
            _member("app.py", SAMPLE_APP.read_bytes(), 0o755),
        ],
        key=lambda item: item[0].name,
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    dest_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in version)
    path = dest_dir / f"sample-app-{safe}.tar.gz"
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as gz:
        gz.write(raw.getvalue())
    path.write_bytes(compressed.getvalue())
    return path


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
