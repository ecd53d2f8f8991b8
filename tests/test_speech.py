"""Given speech (``--speech FILE``, pipeline/speech.py) replaces the VAD in stage 3; torch's thread count is a
setting that no import changes (pipeline/runtime.py). Real voices: the CI utterances in ../shared/data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import ge2e
from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.conversations import FilePlan, list_recordings, make_conversation, write_set
from pipeline.errors import InputError
from pipeline.export import read_rttm, to_rttm
from pipeline.speech import read_speech, track_regions, union
from tests.conftest import REPO, SHARED_DATA, run_script_in_process

CI_AUDIO = SHARED_DATA / "audio" / "librispeech_train-clean-100"
FRAME_S = 0.04  # stage 3 decides on 25 fps frames


# ---- parsing ----------------------------------------------------------------------------------------------
def test_rttm_union_and_file_id(tmp_path):
    rttm = tmp_path / "s.rttm"
    rttm.write_text("SPEAKER a 1 0.50 1.00 <NA> <NA> x <NA> <NA>\n"
                    "SPEAKER a 1 1.20 1.00 <NA> <NA> y <NA> <NA>\n"   # overlaps x: one region
                    "SPEAKER a 1 4.00 0.50 <NA> <NA> x <NA> <NA>\n"
                    "SPEAKER b 1 3.00 1.00 <NA> <NA> x <NA> <NA>\n")
    assert read_speech(rttm, "a", 10.0, 0.1).regions == [(0.5, 2.2), (4.0, 4.5)]
    assert read_speech(rttm, "b", 10.0, 0.1).regions == [(3.0, 4.0)]
    with pytest.raises(InputError, match="none is this recording's reference 'c'"):
        read_speech(rttm, "c", 10.0, 0.1)
    single = tmp_path / "one.rttm"
    single.write_text("SPEAKER other 1 1 2 <NA> <NA> x <NA> <NA>\n")
    assert read_speech(single, "c", 10.0, 0.1).regions == [(1.0, 3.0)]  # one file id: taken whatever its name


def test_uem_and_lab(tmp_path):
    uem = tmp_path / "s.uem"
    uem.write_text(";; comment\na 1 0.0 2.5\na 1 2.5 3.0\nb 1 7 8\n")
    assert read_speech(uem, "a", 10.0, 0.1).regions == [(0.0, 3.0)]  # touching regions join
    lab = tmp_path / "s.lab"
    lab.write_text("0.25\t1.5\tspeech\n# note\n3 4\n2.0 2.5 sp\n")
    speech = read_speech(lab, "anything", 4.05, 0.1)
    assert speech.regions == [(0.25, 1.5), (2.0, 2.5), (3.0, 4.0)] and speech.file_id is None
    assert read_speech(lab, "x", 3.95, 0.1).regions[-1] == (3.0, 3.95)  # within the tolerance: cut at the end
    assert union([(2.0, 3.0), (0.0, 1.0), (0.5, 1.5), (3.0, 3.0)]) == [(0.0, 1.5), (2.0, 3.0)]
    assert track_regions([(0.0, 1.5), (2.0, 3.0)], 1.0, 2.5) == [(0.0, 0.5), (1.0, 1.5)]


@pytest.mark.parametrize("name, text, message", [
    ("empty.lab", "", "holds no speech regions"),
    ("comments.rttm", ";; nothing\n", "holds no speech regions"),
    ("words.lab", "start end\n", "not a time"),
    ("short.lab", "1.0\n", "malformed line"),
    ("bad.uem", "a 1 0.0\n", "malformed UEM line"),
    ("bad.rttm", "SPEAKER a 1 x 1 <NA> <NA> s <NA> <NA>\n", "malformed"),
    ("late.lab", "1 2\n9 12\n", "ends after the audio"),
    ("negative.lab", "-1 2\n", "invalid"),
    ("reversed.lab", "3 2\n", "invalid"),
    ("speech.txt", "1 2\n", "unknown format"),
])
def test_bad_speech_files_are_one_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_speech(path, "a", 10.0, 0.1)
    assert "\n" not in str(err.value)


# ---- through the pipeline, real voices ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def conversation(tmp_path_factory) -> Path:
    """A 20-25 s two-speaker conversation of two CI voices (no overlap, clean), its exact RTTM beside it."""
    folder = tmp_path_factory.mktemp("conversation")
    files = sorted(CI_AUDIO.glob("*.flac"))
    assert len(files) >= 2, f"{CI_AUDIO} lacks the CI voices"
    recordings = list_recordings(CI_AUDIO, [files[0].name, files[3].name])
    cfg = load_config(None, ["conversations.duration_s=[20.0, 25.0]", "conversations.gap_s=[0.4, 1.0]"])
    conv = make_conversation("talk", FilePlan(0, 2, False, False), recordings, sorted(recordings),
                             cfg.conversations, 16000, seed=3)
    write_set(folder, [conv], 16000, {})
    return folder


def _speech_of(turns) -> list[tuple[float, float]]:
    return union([(float(t.start_s), float(t.end_s)) for t in turns])


def _diarize(conversation: Path, data_dir: Path, speech: Path | None, mode: str = "voxconverse"):
    from pipeline.api import diarize

    ge2e.find_weights(None)  # no skip: these tests must fail where the Resemblyzer weights are missing
    return diarize(conversation / "wav" / "talk.wav", data_dir, overrides=[f"diarise.mode={mode}"], device="cpu",
                   vad="webrtc", speaker_model="resemblyzer", weights_dir=data_dir / "no-weights", speech=speech)


@pytest.fixture(scope="module")
def diarized(conversation, tmp_path_factory) -> Path:
    """The conversation diarised once with the VAD (no speech file): a data dir that tests copy, so the
    embeddings (their key holds no speech regions) are computed once for the module."""
    data_dir = tmp_path_factory.mktemp("diarized") / "d"
    _diarize(conversation, data_dir, None)
    return data_dir


def test_given_speech_boundaries_are_kept_in_the_faithful_mode(conversation, diarized, tmp_path):
    """Starting from a VAD run's cache: the given speech must replace the cached VAD regions."""
    shutil.copytree(diarized, tmp_path / "d")
    assert Cache(tmp_path / "d", "talk", create=False).load_pickle("vad.pckl")["method"] == "webrtc"
    given = tmp_path / "talk.rttm"
    given.write_bytes((conversation / "rttm" / "talk.rttm").read_bytes())
    regions = union([(s, e) for s, e, _ in read_rttm(given)["talk"]])
    result = _diarize(conversation, tmp_path / "d", given)
    hyp = _speech_of(result.turns)
    assert len(hyp) == len(regions), (hyp, regions)
    for (hs, he), (rs, re) in zip(hyp, regions):  # every run of given speech, to the frame
        assert abs(hs - rs) <= FRAME_S and abs(he - re) <= FRAME_S, ((hs, he), (rs, re))
    cache = Cache(tmp_path / "d", "talk", create=False)
    vad = cache.load_pickle("vad.pckl")
    assert vad["method"] == "given" and vad["audio"] == regions
    manifest = json.loads(cache.manifest_path("vad.pckl").read_text())
    assert manifest["key"]["speech"]["sha256"] == read_speech(given, "talk", None, 0.1).sha256

    # the same path with other content: stage 3 reruns on the new regions (the key holds the content)
    first_half = [(s, e, spk) for s, e, spk in read_rttm(given)["talk"] if e <= 10.0]
    given.write_text(to_rttm(first_half, "talk"))
    again = _diarize(conversation, tmp_path / "d", given)
    assert max(t.end_s for t in again.turns) <= 10.0 + FRAME_S
    assert cache.load_pickle("vad.pckl")["audio"] == union([(s, e) for s, e, _ in first_half])

    improved = _diarize(conversation, tmp_path / "d", given, mode="improved")  # every rule reads the given speech
    assert all(t.end_s <= 10.0 + FRAME_S for t in improved.turns)


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=300)


# the first as a command; the other two formats through diarize.py's main in this process (one interpreter
# start-up is enough to show the command's behaviour; every format takes the same path, read before stage 1)
@pytest.mark.parametrize("name, text, as_command", [("late.lab", "1 2\n30 400\n", True), ("empty.uem", "", False),
                                                    ("garbled.rttm", "SPEAKER talk 1 one two\n", False)])
def test_a_bad_speech_file_writes_nothing(conversation, tmp_path, capsys, name, text, as_command):
    speech = tmp_path / name
    speech.write_text(text)
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    args = ("--videofile", str(conversation / "wav" / "talk.wav"), "--data_dir", str(data_dir), "--speech",
            str(speech), "--speaker_model", "resemblyzer", "--quiet")
    done = _run_script("diarize.py", *args) if as_command else run_script_in_process("diarize.py", capsys, *args)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "error" in done.stderr, done.stderr
    assert list(data_dir.iterdir()) == []


def test_cluster_with_a_bad_speech_file_keeps_the_cache(diarized, tmp_path):
    from pipeline.stage3 import run_cluster

    shutil.copytree(diarized, tmp_path / "d")
    cache = Cache(tmp_path / "d", "talk", create=False)
    before = {p.name: p.read_bytes() for p in cache.work_dir.rglob("*") if p.is_file()}
    bad = tmp_path / "s.lab"
    bad.write_text("0 1\n2 x\n")
    with pytest.raises(InputError, match="not a time"):
        run_cluster(cache, load_config(None, ["embed.speaker_model=resemblyzer"]), speech=bad)
    assert {p.name: p.read_bytes() for p in cache.work_dir.rglob("*") if p.is_file()} == before


# ---- threads -------------------------------------------------------------------------------------------------
_THREADS_RUN = """
import json, sys
import torch
torch.set_num_threads(3)  # this process's count before the pipeline runs (torch caps OMP_NUM_THREADS at the cores)
import pipeline
pipeline.diarize(sys.argv[1], sys.argv[2], vad=sys.argv[3], speaker_model="resemblyzer", device="cpu",
                 weights_dir=sys.argv[2] + "/no-weights")
print(json.dumps({"threads": torch.get_num_threads()}))
"""


def test_silero_and_webrtc_runs_end_with_the_same_threads(tmp_path):
    """Both processes start with 3 threads (on any machine); importing silero-vad used to set 1."""
    ge2e.find_weights(None)
    wav = sorted(CI_AUDIO.glob("*.flac"))[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = {}
    for vad in ("silero", "webrtc"):
        done = subprocess.run([sys.executable, "-c", _THREADS_RUN, str(wav), str(tmp_path / vad), vad], env=env,
                              capture_output=True, text=True, timeout=600, cwd=REPO)
        assert done.returncode == 0, done.stderr
        seen[vad] = json.loads(done.stdout.strip().splitlines()[-1])["threads"]
        cache = Cache(tmp_path / vad, wav.stem, create=False)
        for name in ("vad.pckl", "embeddings.pckl"):
            assert json.loads(cache.manifest_path(name).read_text())["runtime"] == {"torch_threads": 3}, (vad, name)
    assert seen == {"silero": 3, "webrtc": 3}


def test_threads_setting_is_applied_and_checked():
    import torch

    from pipeline.runtime import apply_threads, keep_threads, torch_default_threads

    default = torch_default_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        with keep_threads():
            torch.set_num_threads(2)  # what an import with a side effect does
        assert torch.get_num_threads() == 1
        assert apply_threads(0) == default and torch.get_num_threads() == default
    finally:
        torch.set_num_threads(default)
    with pytest.raises(InputError, match="runtime.threads"):
        load_config(None, ["runtime.threads=-1"])
    assert np.isfinite(default) and default >= 1


def test_corpus_speech_pattern_never_falls_back_to_the_vad(conversation, tmp_path):
    from pipeline.corpus import RunSettings, assign_references, diarise_one

    wav = conversation / "wav" / "talk.wav"
    items, _ = assign_references([wav], None, speech_pattern=str(tmp_path / "speech" / "{stem}.lab"))
    assert items[0].speech == tmp_path / "speech" / "talk.lab"
    relative, _ = assign_references([wav], None, base=tmp_path, speech_pattern="speech/{stem}.lab")
    assert relative[0].speech == items[0].speech  # relative to the corpus folder, as --faces
    summary = diarise_one(items[0], RunSettings(data_dir=str(tmp_path / "d"), out_dir=str(tmp_path / "o")))
    assert summary.status == "failed" and "--speech file not found" in summary.error
