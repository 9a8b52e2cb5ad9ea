"""The server's artifact store: uploaded tarballs kept by digest in one directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from headway.domain.models import ArtifactRef
from headway.errors import ArtifactError


class TooLarge(ArtifactError):
    status_code = 413
    kind = "too_large"


class ArtifactFiles:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        return self.root / (digest.removeprefix("sha256:") + ".tar.gz")

    async def save(self, chunks: AsyncIterator[bytes], expected: str | None = None) -> ArtifactRef:
        """Stream an upload to disk, hashing as it goes; refuse it past ``max_bytes``.

        The file is renamed into place only once complete and (if ``expected``
        is given) matching, so a broken upload leaves nothing behind.
        """
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(
                            f"artifact is larger than the limit of {self.max_bytes} bytes",
                            hint="raise the server's max artifact size or make the artifact smaller",
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise ArtifactError("the artifact is empty", hint="upload a .tar.gz file")
            ref = ArtifactRef(
                digest="sha256:" + digest.hexdigest(),
                size=size,
                url=f"/api/v1/artifacts/sha256:{digest.hexdigest()}",
            )
            if expected and expected != ref.digest:
                raise ArtifactError(
                    f"the artifact's digest is {ref.digest}, not the {expected} announced",
                    hint="the upload was corrupted or the digest is wrong; upload it again",
                )
            os.replace(tmp_name, self.path_for(ref.digest))
            return ref
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
