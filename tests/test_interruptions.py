"""Bad arguments and interruptions at the command line: checked before heavy imports, one run per reference,
a killed run's temporary files removed by the next run, a full disk named, common options everywhere."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.cache import Cache, atomic_path, is_temporary_name
from pipeline.cli import COMMON_OPTIONS, run_main
from pipeline.errors import BusyError, DiskFullError
from tests.conftest import REPO, clip

SCRIPTS = REPO / "scripts"
HEAVY = ("torch", "torchaudio", "speechbrain", "cv2", "av", "matplotlib", "pyannote.core", "scenedetect")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args, "--quiet"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---- arguments are checked before torch and the other heavy modules are imported ---------------------------
_PROBE = textwrap.dedent("""
    import runpy, sys
    sys.argv = [sys.argv[1]] + sys.argv[2:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    print("exit", code, "heavy", ",".join(heavy) or "-")
""")


def probe(script: str, *args: str) -> tuple[int, list[str], str]:
    """Run ``script`` as __main__ and report its exit code and which heavy modules it had imported by then."""
    result = subprocess.run([sys.executable, "-c", _PROBE.replace("{heavy!r}", repr(HEAVY)),
                             str(SCRIPTS / script), *args, "--quiet"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    words = result.stdout.split()
    assert words[:1] == ["exit"], result.stdout + result.stderr
    return int(words[1]), [] if words[3] == "-" else words[3].split(","), result.stderr


@pytest.mark.parametrize("script, args, needle", [
    ("run_pipeline.py", ["--videofile", "missing.mp4", "--data_dir", "{tmp}/d"], "video file not found"),
    ("diarize.py", ["--videofile", "missing.mp4", "--data_dir", "{tmp}/d"], "video file not found"),
    ("diarize.py", ["--videofile", "{video}", "--data_dir", "{tmp}/d", "--reference", "../x"], "plain name"),
    ("diarize.py", ["--videofile", "{video}", "--data_dir", "{tmp}/d", "--out_dir", "/proc/nowhere"], "--out_dir"),
    ("diarize.py", ["--videofile", "{video}", "--data_dir", "{tmp}/d", "--set", "detect.batch_size=0"],
     "detect.batch_size"),
    ("run_syncnet.py", ["--data_dir", "{tmp}/d", "--reference", "r"], "run scripts/run_pipeline.py first"),
    ("run_syncnet.py", ["--videofile", "missing.avi"], "video file not found"),
    ("cluster.py", ["--data_dir", "{tmp}/d", "--reference", "r"], "run scripts/run_pipeline.py first"),
    ("visualise.py", ["--data_dir", "{tmp}/d", "--reference", "r"], "run scripts/run_pipeline.py first"),
    ("score.py", ["--ref", "missing.rttm", "--hyp", "missing.rttm"], "not found"),
])
def test_bad_arguments_fail_before_heavy_imports(tmp_path, script, args, needle):
    video = clip("gestsync_asd2spk_b")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{video}", str(video)) for a in args]
    code, heavy, stderr = probe(script, *args)
    assert code == 2 and needle in stderr and stderr.count("\n") == 1, stderr
    assert heavy == [], f"{script} imported {heavy} before refusing its arguments"
    assert not (tmp_path / "d").exists() or script.startswith(("run_pipeline", "diarize"))


# ---- one run per reference ------------------------------------------------------------------------------------
def test_second_run_on_a_held_reference_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    cache = Cache(tmp_path, "ref")
    with cache.locked():
        busy = run_script("run_pipeline.py", "--videofile", str(notes), "--data_dir", str(tmp_path),
                          "--reference", "ref")
        line = assert_one_line_error(busy, "another run is working on reference 'ref'", f"process {os.getpid()}")
        assert "run_syncnet" not in line
        other = run_script("run_pipeline.py", "--videofile", str(notes), "--data_dir", str(tmp_path),
                           "--reference", "other")  # other references are free
        assert "another run" not in other.stderr and other.returncode == 2
    free = run_script("run_pipeline.py", "--videofile", str(notes), "--data_dir", str(tmp_path), "--reference", "ref")
    assert "another run" not in free.stderr and free.returncode == 2  # the lock is gone; the file is no video


def test_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    cache = Cache(tmp_path, "ref")
    with cache.locked():
        with Cache(tmp_path, "ref").locked():  # a stage function under a script's lock
            pass
        holder = subprocess.run([sys.executable, "-c", "import sys; from pipeline.cache import Cache\n"
                                 "with Cache(sys.argv[1], 'ref').locked(): pass", str(tmp_path)],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert holder.returncode != 0 and "BusyError" in holder.stderr
    with cache.locked():
        pass


def test_lock_of_a_killed_run_is_released(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.cache import Cache\n"
                               "with Cache(sys.argv[1], 'ref').locked():\n"
                               "    print('held', flush=True); time.sleep(60)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError):
            with Cache(tmp_path, "ref").locked():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with Cache(tmp_path, "ref").locked():  # kill -9 released it; the stale lock file does not block
        pass


# ---- a killed run's temporary files are removed by the next run -----------------------------------------------
def _killed_writer(final: Path, suffix: str | None) -> Path:
    """The temporary file that ``atomic_path`` leaves when its process is killed with -9 while writing."""
    code = ("import sys, os, time; from pathlib import Path; from pipeline.cache import atomic_path\n"
            "suffix = sys.argv[2] or None\n"
            "with atomic_path(Path(sys.argv[1]), suffix=suffix) as tmp:\n"
            "    tmp.write_bytes(b'half'); print(tmp, flush=True); time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(final), suffix or ""], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    tmp = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert tmp.is_file()
    return tmp


def test_next_run_removes_a_killed_runs_temporary_files(tmp_path):
    cache = Cache(tmp_path / "data", "REF")
    out_dir = tmp_path / "out"
    left = [_killed_writer(cache.crop_frames(0), None),                       # .00000.mkv.*.part.mkv
            _killed_writer(cache.work("REF_annotated.mp4"), ".part.mp4"),     # .REF_annotated.mp4.*.part.mp4
            _killed_writer(cache.audio_wav, ".part.wav"),
            _killed_writer(cache.manifest_path("faces.pckl"), None),
            _killed_writer(out_dir / "REF_sync.png", None)]
    assert all(is_temporary_name(p.name) for p in left)
    kept = [cache.work("my.part.notes"), cache.work(".hidden.part"), cache.crop_dir / "00000.mkv",
            _killed_writer(out_dir / "OTHER_sync.png", None)]  # another reference's output in a shared --out_dir
    for path in kept[:3]:
        path.write_text("user's")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    result = run_script("run_pipeline.py", "--videofile", str(notes), "--data_dir", str(tmp_path / "data"),
                        "--reference", "REF")
    assert result.returncode == 2  # refused (not a video), after cleaning under the lock
    assert [p for p in left[:4] if p.exists()] == []
    assert all(p.exists() for p in kept)
    with Cache(tmp_path / "data", "REF").locked(extra_dirs=[out_dir]):
        pass
    assert not left[4].exists() and kept[3].exists()


# ---- a full disk ------------------------------------------------------------------------------------------------
def test_full_disk_names_the_folder(tmp_path):
    final = tmp_path / "pywork" / "REF" / "faces.pckl"
    with pytest.raises(DiskFullError, match=f"no space left on the device holding {final.parent}"):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"x")
            with open("/dev/full", "wb") as full:  # a real ENOSPC from the kernel
                full.write(b"x" * 65536)
                full.flush()
    assert not final.exists() and list(final.parent.iterdir()) == []


def test_full_disk_outside_atomic_writes_is_one_line(capsys):
    import argparse

    def main(_args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/pywork/REF/00000.mkv")

    assert run_main(main, argparse.ArgumentParser(prog="x.py"), []) == 1
    err = capsys.readouterr().err
    assert err == "x.py: error: no space left on the device holding /data/pywork/REF: free some space and re-run\n"

    def main2(_args):
        raise DiskFullError("no space left on the device holding /d")

    assert run_main(main2, argparse.ArgumentParser(prog="x.py"), []) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---- --debug and MemoryError ------------------------------------------------------------------------------------
def test_debug_shows_a_traceback_for_memory_error(capsys):
    import argparse

    def main(_args):
        raise MemoryError()

    parser = argparse.ArgumentParser(prog="x.py")
    parser.add_argument("--debug", action="store_true")
    assert run_main(main, parser, []) == 1
    assert capsys.readouterr().err == "x.py: error: out of memory\n"
    assert run_main(main, parser, ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "MemoryError" in err and err.endswith("x.py: error: out of memory\n")


# ---- every script takes the common options ----------------------------------------------------------------------
@pytest.mark.parametrize("script, args", [
    ("run_pipeline.py", ["--videofile", "v.mp4", "--data_dir", "d"]),
    ("run_syncnet.py", ["--data_dir", "d", "--reference", "r"]),
    ("cluster.py", ["--data_dir", "d", "--reference", "r"]),
    ("visualise.py", ["--data_dir", "d", "--reference", "r"]),
    ("diarize.py", ["--videofile", "v.mp4", "--data_dir", "d"]),
    ("score.py", ["--ref", "a.rttm", "--hyp", "b.rttm"]),
    ("benchmark.py", ["--videofile", "v.mp4"]),
    ("diarize_corpus.py", ["--videos", "v", "--data_dir", "d", "--out_dir", "o"]),
    ("train_sync.py", ["--data_dir", "d", "--out_dir", "o"]),
    ("simulate_fusion.py", ["--rttm_dir", "r"]),
    ("make_conversations.py", ["--audio_dir", "a", "--out_dir", "o", "--num_files", "1", "--seed", "1"]),
    ("eval_conversations.py", ["--conversations", "s", "--data_dir", "d", "--mode", "improved"]),
])
def test_every_script_accepts_the_common_options(script, args):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{script[:-3]}", SCRIPTS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.build_parser()
    common = ["--weights_dir", "w", "--device", "cpu", "--force", "--quiet", "--debug", "--threads", "2",
              "--config", "c.yaml", "--set", "detect.batch_size=2"]
    assert {o for o in common if o.startswith("--")} >= set(COMMON_OPTIONS)
    parsed = parser.parse_args(args + common)
    assert parsed.weights_dir == "w" and parsed.device == "cpu" and parsed.force and parsed.quiet and parsed.debug
    assert parsed.threads == 2
    assert parsed.overrides == ["detect.batch_size=2"]
