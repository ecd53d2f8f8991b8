"""The cache directory: the only code that knows folder and file names.

Layout under ``data_dir`` (syncnet_python's, one sub-folder per ``reference``)::

    pyavi/REF/audio.wav          16 kHz mono 16-bit audio of the whole video
    pywork/REF/<name>.pckl       pickled intermediates (formats: pipeline/formats.py)
    pywork/REF/manifest/<name>.json   what each intermediate was made from
    pycrop/REF/00000.avi         face-track crops with their audio, to watch
    pycrop/REF/00000.mkv         the same frames, lossless (RGB H.264 at qp 0), read by stage 2
    pycrop/REF/00000.wav         the track's audio, read by stages 2 and 3

Every file is written to a temporary name and renamed into place, and an artifact is trusted only when
its manifest exists, its key (config, inputs, upstream digests, version) matches what the caller expects,
and the files still hash to what the manifest recorded. A manifest is removed before its artifact is
rewritten, so a run killed at any moment leaves nothing a later run trusts.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import BusyError, CacheError, DiskFullError, InputError, PipelineError
from pipeline.formats import AUDIO_FILE, RUN_PIPELINE, SOURCE_FILE
from pipeline.runtime import runtime_record
from pipeline.version import __version__

_REFERENCE_RE = re.compile(r"^[^/\\\x00]+$")
_HASH_CHUNK_BYTES = 1 << 20


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp's files are 0600


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_identity(path: Path) -> dict[str, Any]:
    """What identifies an input video in cache keys: its size and the sha256 of all its bytes.

    Content, not path or modification time: a video that is moved, renamed, copied or touched keeps its
    cached stages (and the user's own faces.pckl), and any change to its bytes redoes them. The whole file
    is hashed, not sampled chunks, so an edit anywhere is seen; it streams at about 0.9 GB/s on the 2-core
    CI machine, a few seconds for a 2-hour video against minutes to decode it.
    """
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def file_identity(path: Path) -> dict[str, Any]:
    """``content_identity`` and where the file is now (``path``, absolute), as stage 4 needs to find it."""
    return dict(content_identity(path), path=str(Path(path).resolve()))


def check_reference(reference: str) -> str:
    """A reference names one folder: no path separators, not empty, not '.' or '..'."""
    if not reference or reference in (".", "..") or not _REFERENCE_RE.match(reference):
        raise InputError(f"--reference must be a plain name without path separators, got {reference!r}")
    return reference


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """True for an OSError (PyAV's included) that says the disk is full or the quota is exceeded."""
    return isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS


def disk_full_error(folder: Path) -> DiskFullError:
    """The one-line error for a full file system under ``folder``."""
    return DiskFullError(f"no space left on the device holding {folder}: free some space (or use another "
                         f"folder) and re-run; finished intermediates are kept")


# Names of the temporary files ``atomic_path`` makes (``.NAME.XXXXXXXX.partSUFFIX``, XXXXXXXX from mkstemp):
# what a killed run can leave behind. (The empty ``.write-test-*`` files live microseconds and are left alone:
# another process may be between making and removing one.)
_PART_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part(\.[A-Za-z0-9]+)*$")


def is_temporary_name(name: str) -> bool:
    """True for the name of a temporary file of ``atomic_path``."""
    return bool(_PART_RE.match(name))


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    A full disk while the block writes (or while the file is made) is a one-line ``DiskFullError`` naming
    the folder.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final.name}.", suffix=suffix if suffix is not None else f".part{final.suffix}", dir=final.parent
        )
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(final.parent) from err
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, final)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(final.parent) from err
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` through a temporary file and a rename, flushed to disk."""
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


class Cache:
    """One video's intermediates under ``data_dir``, with manifests that make reuse safe."""

    def __init__(self, data_dir: str | Path, reference: str, create: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.reference = check_reference(reference)
        self.avi_dir = self.data_dir / "pyavi" / reference
        self.work_dir = self.data_dir / "pywork" / reference
        self.crop_dir = self.data_dir / "pycrop" / reference
        self.manifest_dir = self.work_dir / "manifest"
        if create:
            self._make_writable()

    def _make_writable(self) -> None:
        try:
            for folder in (self.avi_dir, self.work_dir, self.crop_dir, self.manifest_dir):
                folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.work_dir, prefix=".write-test-"):
                pass
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(self.data_dir) from None
            raise InputError(f"cannot write to --data_dir {self.data_dir}: {err.strerror or err}") from None

    # ---- one run at a time ----------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """The lock file of this reference (pywork/REF/.lock)."""
        return self.work_dir / ".lock"

    @contextlib.contextmanager
    def locked(self, extra_dirs: Sequence[Path] = ()) -> Iterator[None]:
        """Hold this reference's lock for the block, then remove what killed runs left (``remove_stale_parts``).

        The lock is ``fcntl.flock`` on pywork/REF/.lock: the kernel releases it when the process ends,
        however it ends (kill -9 included), so a stale lock file never blocks. A second process asking
        for it gets a one-line ``BusyError``. Re-entrant within one process (a script that runs several
        stages, or a stage function called under a script's lock).
        """
        key = str(self.lock_path.resolve())
        if key in _HELD_LOCKS:
            _HELD_LOCKS[key][1] += 1
            try:
                yield
            finally:
                _HELD_LOCKS[key][1] -= 1
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+", encoding="utf-8")
        try:
            claim_lock(handle, lambda holder: f"another run is working on reference {self.reference!r} in "
                                              f"{self.data_dir}{holder}: wait for it to finish, or use another "
                                              f"--reference")
            _HELD_LOCKS[key] = [handle, 1]
            try:
                self.remove_stale_parts(extra_dirs)
                yield
            finally:
                del _HELD_LOCKS[key]
                with contextlib.suppress(OSError):
                    handle.truncate(0)
        finally:
            handle.close()  # closing releases the flock

    def remove_stale_parts(self, extra_dirs: Sequence[Path] = ()) -> list[Path]:
        """Remove the temporary files (``atomic_path``'s ``.NAME.XXXXXXXX.part*``) that a killed run left in
        this reference's folders, and those of this reference's outputs in ``extra_dirs``.

        Call only while holding the lock (``locked`` does): then no other run of ours is writing them.
        Only names of our temporary-file pattern are touched; in ``extra_dirs`` (an --out_dir shared by
        several references) only those of files named after this reference.
        """
        removed = []
        folders = [(folder, "") for folder in (self.avi_dir, self.work_dir, self.crop_dir, self.manifest_dir)]
        folders += [(Path(folder), f".{self.reference}") for folder in extra_dirs]
        for folder, prefix in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                ours = entry.name.startswith(prefix) and is_temporary_name(entry.name)
                if ours and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
        return removed

    # ---- names -------------------------------------------------------------------------------
    @property
    def audio_wav(self) -> Path:
        """Whole-video 16 kHz mono audio."""
        return self.avi_dir / AUDIO_FILE

    @property
    def source_json(self) -> Path:
        """Where the input video was last seen (pywork/REF/source.json); not an intermediate: no manifest,
        no digest, so moving the video changes nothing downstream."""
        return self.work_dir / SOURCE_FILE

    def record_source(self, videofile: Path, identity: Mapping[str, Any]) -> None:
        """Remember the path of the video with content ``identity`` (for stage 4's video and VIA project)."""
        entry = dict(identity, path=str(Path(videofile).resolve()))
        try:
            if json.loads(self.source_json.read_text(encoding="utf-8")) == entry:
                return
        except (OSError, ValueError):
            pass
        write_bytes_atomic(self.source_json, json.dumps(entry, indent=1, sort_keys=True).encode())

    def source_video(self, media_info: Mapping[str, Any]) -> Path:
        """The path of the video that media.pckl describes: source.json when it names the same content,
        else the path media.pckl itself recorded (caches written before source.json existed)."""
        source = dict(media_info.get("source") or {})
        try:
            entry = json.loads(self.source_json.read_text(encoding="utf-8"))
            if isinstance(entry, dict) and "path" in entry and all(entry.get(k) == v for k, v in source.items()
                                                                  if k in ("size", "sha256")):
                return Path(entry["path"])
        except (OSError, ValueError):
            pass
        if "path" not in source:
            raise CacheError(f"{self.source_json} is missing: run {RUN_PIPELINE} again")
        return Path(source["path"])

    def work(self, name: str) -> Path:
        """An intermediate in pywork/REF."""
        return self.work_dir / name

    def crop_avi(self, track_idx: int) -> Path:
        """Watchable crop of one face track, with its audio."""
        return self.crop_dir / f"{track_idx:05d}.avi"

    def crop_frames(self, track_idx: int) -> Path:
        """Lossless crop frames of one face track (Matroska)."""
        return self.crop_dir / f"{track_idx:05d}.mkv"

    def crop_wav(self, track_idx: int) -> Path:
        """16 kHz mono audio of one face track."""
        return self.crop_dir / f"{track_idx:05d}.wav"

    def manifest_path(self, name: str) -> Path:
        return self.manifest_dir / f"{name}.json"

    def relative(self, path: Path) -> str:
        """``path`` relative to ``data_dir``, as manifests list files."""
        return str(Path(path).resolve().relative_to(self.data_dir.resolve()))

    # ---- manifests ---------------------------------------------------------------------------
    def read_manifest(self, name: str) -> dict | None:
        """The manifest of ``name``, or None when absent or unreadable."""
        try:
            with open(self.manifest_path(name), encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def invalidate(self, name: str) -> None:
        """Forget ``name``: remove its manifest so nothing trusts its files until they are rewritten."""
        with contextlib.suppress(FileNotFoundError):
            self.manifest_path(name).unlink()

    def files_intact(self, manifest: Mapping) -> bool:
        """Every file listed in the manifest exists and has the recorded sha256."""
        for rel, expected in manifest.get("files", {}).items():
            path = self.data_dir / rel
            if not path.is_file() or sha256_file(path) != expected:
                return False
        return True

    def is_valid(self, name: str, key: Mapping) -> bool:
        """``name`` was made from exactly ``key`` and its files are intact."""
        manifest = self.read_manifest(name)
        if manifest is None or manifest.get("key") != _jsonable(key):
            return False
        return self.files_intact(manifest)

    def record(self, name: str, stage: str, key: Mapping, files: Sequence[Path]) -> dict:
        """Write the manifest of ``name`` after its files are in place."""
        manifest = {
            "name": name,
            "stage": stage,
            "key": _jsonable(key),
            "files": {self.relative(path): sha256_file(Path(path)) for path in files},
            "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runtime": runtime_record(),  # not part of the key: how it ran (torch threads), not what it is
        }
        write_bytes_atomic(self.manifest_path(name), json.dumps(manifest, indent=1, sort_keys=True).encode())
        return manifest

    def digest(self, name: str) -> str | None:
        """A digest of ``name``'s recorded files, for downstream keys; None when it has no manifest."""
        manifest = self.read_manifest(name)
        if manifest is None:
            return None
        text = json.dumps(manifest.get("files", {}), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- pickled intermediates ---------------------------------------------------------------
    def save_pickle(self, name: str, obj: Any, stage: str, key: Mapping) -> Path:
        """Atomically pickle ``obj`` to pywork/REF/``name`` and record its manifest."""
        path = self.work(name)
        self.invalidate(name)
        write_bytes_atomic(path, pickle.dumps(obj, protocol=4))
        self.record(name, stage, key, [path])
        return path

    def load_pickle(self, name: str) -> Any:
        """Unpickle pywork/REF/``name`` (trusted: written by this pipeline or placed by the user)."""
        path = self.work(name)
        try:
            with open(path, "rb") as handle:
                return pickle.load(handle)
        except FileNotFoundError:
            raise CacheError(f"{path} is missing") from None
        except Exception as err:  # a corrupt pickle can raise almost anything
            raise CacheError(f"{path} is unreadable ({type(err).__name__}); delete it and re-run") from None

    def load_valid(self, name: str, key: Mapping) -> Any | None:
        """The intermediate ``name`` if it was made from ``key`` and is intact, else None."""
        if not self.is_valid(name, key):
            return None
        try:
            return self.load_pickle(name)
        except CacheError:
            return None

    def require(self, name: str, script: str) -> Any:
        """Load an earlier stage's intermediate or say which script makes it."""
        manifest = self.read_manifest(name)
        if manifest is None or not self.work(name).is_file():
            raise CacheError(
                f"no {name} for reference {self.reference!r} in {self.data_dir}: run {script} first"
            )
        if not self.files_intact(manifest):
            raise CacheError(f"{self.work(name)} changed since it was written: run {script} again")
        return self.load_pickle(name)

    def require_fresh(self, name: str, script: str, upstream: Mapping[str, str]) -> Any:
        """Like ``require``, and also check that ``name`` was made from the current ``upstream`` digests."""
        obj = self.require(name, script)
        recorded = (self.read_manifest(name) or {}).get("key", {}).get("upstream", {})
        for up_name in upstream:
            if recorded.get(up_name) != self.digest(up_name):
                raise CacheError(f"{name} is stale ({up_name} changed since): run {script} again")
        return obj


_HELD_LOCKS: dict[str, list] = {}  # lock file -> [open handle, depth], for re-entry in one process


def claim_lock(handle, busy_message: Callable[[str], str]) -> None:
    """Take ``fcntl.flock`` on the open lock file ``handle`` without waiting and write the holder's line in it
    (``process N since T``); if another process holds it, a one-line BusyError whose text is
    ``busy_message(" (process N since T)")`` (an empty argument when the holder wrote nothing)."""
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        raise BusyError(busy_message(f" ({holder})" if holder else "")) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so keys compare equal to what a manifest stores."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_atomic_step(cache: Cache, name: str, produce: Callable[[], Any], stage: str, key: Mapping,
                    force: bool = False) -> tuple[Any, bool]:
    """Return (intermediate, reused): reuse ``name`` when valid for ``key``, else produce and save it."""
    if not force:
        cached = cache.load_valid(name, key)
        if cached is not None:
            return cached, True
    cache.invalidate(name)
    obj = produce()
    cache.save_pickle(name, obj, stage, key)
    return obj, False


__all__ = [
    "Cache",
    "PipelineError",
    "atomic_path",
    "check_reference",
    "content_identity",
    "disk_full_error",
    "is_disk_full",
    "is_temporary_name",
    "file_identity",
    "run_atomic_step",
    "sha256_file",
    "write_bytes_atomic",
]
