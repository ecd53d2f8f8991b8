"""The improved fusion rule on real speech with Resemblyzer's GE2E speaker model and no faces (issue 14):
pyannote's sample.wav (2 speakers, faithful mode 46.4 % DER) and tst00.wav (4 speakers, 59 % overlap, scored
on its UEM). Each wav goes once through the three stage scripts; stage 3 then runs in both modes on the same
cached VAD and embeddings. Skips, saying why, without Resemblyzer's weights (see tests/test_resemblyzer.py).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from models import ge2e
from pipeline.cli import run_main
from pipeline.errors import CheckpointError
from pipeline.score import load_rttms, read_uem, score
from tests.conftest import REPO, SHARED_DATA

AUDIO = SHARED_DATA / "audio"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _both_modes(wav: Path, data_dir: Path) -> dict[str, list[tuple[float, float, str]]]:
    """Turns of ``wav`` by the voxconverse and the improved rule (stages 1-3, resemblyzer, webrtc)."""
    try:
        ge2e.find_weights(None)
    except CheckpointError as err:
        pytest.skip(f"no Resemblyzer weights here ({err})")
    if not wav.exists():
        pytest.skip(f"{wav} is not here")
    from pipeline.cache import Cache
    from pipeline.formats import turns_from_pickle

    reference = wav.stem
    steps = [("run_pipeline", ["--videofile", str(wav)]), ("run_syncnet", [])]
    steps += [("cluster", ["--speaker_model", "resemblyzer", "--vad", "webrtc", "--fusion", mode])
              for mode in ("voxconverse", "improved")]
    result = {}
    for name, args in steps:
        module = _script(name)
        argv = [*args, "--data_dir", str(data_dir), "--reference", reference, "--weights_dir",
                str(data_dir / "no-weights"), "--device", "cpu", "--quiet"]
        assert run_main(module.main, module.build_parser(), argv) == 0
        if name == "cluster":
            turns = turns_from_pickle(Cache(data_dir, reference).load_pickle("diarization.pckl"))
            result[args[-1]] = [(t.start_s, t.end_s, t.speaker) for t in turns]
    return result


def test_improved_mode_on_sample_wav(tmp_path):
    """sample.wav: at most 25 % DER (faithful 46.4 %) and exactly the 2 speakers."""
    hyps = _both_modes(AUDIO / "pyannote_sample" / "sample.wav", tmp_path)
    ref = {"sample": load_rttms(AUDIO / "pyannote_sample" / "sample.rttm")["sample"]}
    faithful = score(ref, {"sample": hyps["voxconverse"]}).overall.der
    improved = score(ref, {"sample": hyps["improved"]}).overall.der
    assert faithful == pytest.approx(0.464, abs=0.01)
    assert improved <= 0.25
    assert len({spk for _, _, spk in hyps["improved"]}) == 2


def test_improved_mode_beats_faithful_on_tst00(tmp_path):
    """tst00.wav with its UEM: the improved rule's DER is below the faithful rule's."""
    folder = AUDIO / "pyannote_debug"
    hyps = _both_modes(folder / "tst00.wav", tmp_path)
    ref = {"tst00": load_rttms(folder / "debug.test.rttm")["tst00"]}
    uem = {"tst00": read_uem(folder / "debug.test.uem")["tst00"]}
    ders = {mode: score(ref, {"tst00": hyp}, uem=uem).overall.der for mode, hyp in hyps.items()}
    print(ders)
    assert ders["improved"] < ders["voxconverse"]
