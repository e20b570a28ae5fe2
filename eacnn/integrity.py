"""Is a file the one it should be? SHA-256 for the files shipped in ``eacnn/data``, the zip CRC for other checkpoints.

The shipped artefacts (checkpoints, the embedded MP-20 table) are listed with their SHA-256 and size in
``eacnn/data/sha256.json`` (:data:`MANIFEST`). :func:`verify_file` is called before such a file is read: a listed file
must match its digest; any other zip archive (every checkpoint ``torch.save`` writes is one) must pass
``zipfile.ZipFile.testzip``, the CRC-32 of every member, so a checkpoint with a damaged block is refused before
``torch.load`` half-reads it. Either failure names the file and says how to get a good copy.

After replacing a shipped file on purpose (a retrained ``default.pt``), record it::

    python -m eacnn.integrity --update      # rewrite the manifest from the files now in eacnn/data
    python -m eacnn.integrity               # check every listed file (exit 1 on a mismatch)
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

from eacnn.errors import EACNNError, IntegrityError
from eacnn.paths import DATA_DIR, atomic_write_bytes

__all__ = ["MANIFEST", "SHIPPED_PATTERNS", "sha256_of", "manifest", "verify_file", "verify_shipped", "write_manifest"]

#: The recorded digests: {path relative to eacnn/data (POSIX): {"sha256": hex, "bytes": size}}.
MANIFEST = DATA_DIR / "sha256.json"
#: Globs (relative to eacnn/data) of the files the manifest must list.
SHIPPED_PATTERNS = ("checkpoints/*.pt", "*.csv.gz")
_CHUNK = 1 << 20  # bytes read at a time while hashing


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=4)
def _read_manifest(path: Path, mtime_ns: int) -> dict:  # keyed by mtime too: a rewrite within a process is seen
    return json.loads(path.read_text())


def manifest() -> dict[str, dict]:
    """The recorded digests (empty when the manifest file is missing)."""
    if not MANIFEST.is_file():
        return {}
    return _read_manifest(MANIFEST, MANIFEST.stat().st_mtime_ns)


def _shipped_name(path: Path) -> str | None:
    """``path`` relative to eacnn/data as a POSIX string, or None when it lies elsewhere."""
    try:
        return path.resolve().relative_to(DATA_DIR.resolve()).as_posix()
    except ValueError:
        return None


def verify_file(path: str | Path, error: type[EACNNError] = IntegrityError) -> None:
    """Refuse a damaged file before it is read.

    A file listed in :data:`MANIFEST` must have the recorded size and SHA-256. Any other zip archive must pass
    its CRC check. Other files are not checked here (their readers validate what they read).

    Args:
        path: the file (it must exist).
        error: the exception class to raise (e.g. :class:`eacnn.errors.CheckpointError` for checkpoints).

    Raises:
        ``error``: the message names the file, what failed, and what to do.
    """
    path = Path(path)
    name = _shipped_name(path)
    record = manifest().get(name) if name is not None else None
    if record is not None:
        size = path.stat().st_size
        digest = sha256_of(path) if size == record["bytes"] else None
        if digest != record["sha256"]:
            found = f"SHA-256 {digest[:12]}..." if digest else f"{size:,} bytes"
            raise error(
                f"{path} is damaged or was replaced: the package records SHA-256 {record['sha256'][:12]}... "
                f"({record['bytes']:,} bytes) for it, the file has {found}. Reinstall eacnn "
                f"(pip install --force-reinstall eacnn) or, in a source checkout, restore it with "
                f"`git checkout -- eacnn/data/{name}`; if you replaced it on purpose, record it with "
                f"`python -m eacnn.integrity --update`"
            )
        return
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # zlib errors arrive as BadZipFile
            bad = f"<unreadable: {err}>"
        if bad is not None:
            raise error(
                f"{path} is corrupt: the zip entry {bad!r} fails its CRC check, so its bytes are not the ones "
                f"written. Copy the file again from its source or retrain it; it was not loaded"
            )


def verify_shipped() -> dict[str, str]:
    """Check every file of the manifest and that every shipped artefact is listed: {name: problem} (empty: all good)."""
    problems = {}
    recorded = manifest()
    for pattern in SHIPPED_PATTERNS:
        for path in sorted(DATA_DIR.glob(pattern)):
            name = path.relative_to(DATA_DIR).as_posix()
            if name not in recorded:
                problems[name] = "not listed in the manifest"
    for name in recorded:
        path = DATA_DIR / name
        if not path.is_file():
            problems[name] = "listed but missing"
            continue
        try:
            verify_file(path)
        except IntegrityError as err:
            problems[name] = str(err)
    return problems


def write_manifest() -> Path:
    """Record the SHA-256 and size of every shipped artefact (:data:`SHIPPED_PATTERNS`) in :data:`MANIFEST`."""
    records = {}
    for pattern in SHIPPED_PATTERNS:
        for path in sorted(DATA_DIR.glob(pattern)):
            records[path.relative_to(DATA_DIR).as_posix()] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    atomic_write_bytes(MANIFEST, (json.dumps(dict(sorted(records.items())), indent=2) + "\n").encode())
    return MANIFEST


def main(argv: list[str] | None = None) -> int:
    """``python -m eacnn.integrity [--update]``: check the shipped files (exit 1 on a problem) or record them."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--update"]:
        write_manifest()
        print(f"recorded {len(manifest())} files in {MANIFEST}")
        return 0
    if argv:
        print("usage: python -m eacnn.integrity [--update]", file=sys.stderr)
        return 2
    problems = verify_shipped()
    for name, problem in problems.items():
        print(f"{name}: {problem}", file=sys.stderr)
    print(f"{len(manifest()) - len(problems)} of {len(manifest())} shipped files verified")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
