"""Scoring (pipeline/score.py, scripts/score.py) on real VoxConverse RTTMs and hand-computed cases."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.export import read_rttm, to_rttm
from pipeline.score import format_report, load_rttms, read_uem, score, score_paths, union_per_speaker

VOXCONVERSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "voxconverse"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "score.py"

# abjxc (dev): spk00 at 0.40-7.04 and 8.68-64.64, nothing else.
# afjiv (dev), vbjlx (dev, 36.6 % overlapped speech), kdfqk (dev, 20 speakers), utial (test, same-speaker overlap).
SELF_SCORED = [("dev", "abjxc"), ("dev", "afjiv"), ("dev", "vbjlx"), ("dev", "kdfqk"), ("test", "utial")]


def rttm(split: str, name: str) -> Path:
    path = VOXCONVERSE / split / f"{name}.rttm"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def one_file(segments, file_id="f"):
    return {file_id: list(segments)}


def assert_parts(result, missed_s=0.0, false_alarm_s=0.0, confusion_s=0.0, scored_s=None):
    assert result.missed_s == pytest.approx(missed_s, abs=1e-6)
    assert result.false_alarm_s == pytest.approx(false_alarm_s, abs=1e-6)
    assert result.confusion_s == pytest.approx(confusion_s, abs=1e-6)
    if scored_s is not None:
        assert result.scored_s == pytest.approx(scored_s, abs=1e-6)
        assert result.der == pytest.approx((missed_s + false_alarm_s + confusion_s) / scored_s, abs=1e-9)


# ---- real VoxConverse references ------------------------------------------------------------------------------
@pytest.mark.parametrize("split, name", SELF_SCORED)
@pytest.mark.parametrize("collar_s", [0.0, 0.25])
def test_reference_against_itself_is_perfect(split, name, collar_s):
    path = rttm(split, name)
    report = score_paths(path, path, collar_s=collar_s)
    row = report.files[0]
    assert row.file_id == name and row.scored_s > 0
    assert_parts(row)
    assert row.der == 0.0 and row.jer == pytest.approx(0.0, abs=1e-12)


def test_scored_time_is_speaker_time_with_same_speaker_overlap_merged():
    """utial has spk00 at 247.58-276.54 containing 250.67-253.65: that speech must count once."""
    path = rttm("test", "utial")
    segments = read_rttm(path)["utial"]
    cells = {}  # 10 ms grid cells per speaker, counted independently of the scorer
    for start_s, end_s, speaker in segments:
        cells.setdefault(speaker, set()).update(range(round(start_s * 100), round(end_s * 100)))
    expected_s = sum(len(c) for c in cells.values()) / 100
    assert expected_s < sum(e - s for s, e, _ in segments)  # the file really has a same-speaker overlap
    row = score_paths(path, path, collar_s=0.0).files[0]
    assert row.scored_s == pytest.approx(expected_s, abs=1e-6)


def test_consistent_relabelling_is_perfect():
    reference = read_rttm(rttm("dev", "kdfqk"))
    renamed = {f: [(s, e, f"someone_{k[::-1]}") for s, e, k in segs] for f, segs in reference.items()}
    row = score(reference, renamed, collar_s=0.25).files[0]
    assert_parts(row)
    assert row.der == 0.0


def test_dropped_segment_is_missed_minus_its_collars():
    """abjxc: dropping spk00's 0.40-7.04 misses 6.64 s, less 0.25 s of collar inside each end."""
    reference = read_rttm(rttm("dev", "abjxc"))
    hypothesis = one_file(reference["abjxc"][1:], "abjxc")
    row = score(reference, hypothesis, collar_s=0.25).files[0]
    assert_parts(row, missed_s=6.64 - 0.5, scored_s=(6.64 - 0.5) + (55.96 - 0.5))
    row = score(reference, hypothesis, collar_s=0.0).files[0]
    assert_parts(row, missed_s=6.64, scored_s=6.64 + 55.96)


def test_segment_shifted_by_one_second():
    """abjxc with 8.68-64.64 moved to 9.68-65.64: 1 s missed at its start and 1 s false alarm at its end."""
    reference = read_rttm(rttm("dev", "abjxc"))
    (s0, e0, k0), (s1, e1, k1) = reference["abjxc"]
    hypothesis = one_file([(s0, e0, k0), (s1 + 1.0, e1 + 1.0, k1)], "abjxc")
    row = score(reference, hypothesis, collar_s=0.0).files[0]
    assert_parts(row, missed_s=1.0, false_alarm_s=1.0, scored_s=6.64 + 55.96)
    # collar semantics: 0.25 s on EACH side of 8.68 and 64.64 leaves 0.75 s of each error
    # (a 0.25 s total width, pyannote.metrics' own meaning of collar=0.25, would leave 0.875 s)
    row = score(reference, hypothesis, collar_s=0.25).files[0]
    assert_parts(row, missed_s=0.75, false_alarm_s=0.75, scored_s=(6.64 - 0.5) + (55.96 - 0.5))


def test_relabelled_segment_is_confusion():
    reference = read_rttm(rttm("dev", "afjiv"))["afjiv"]
    speakers = sorted({k for _, _, k in reference})
    assert len(speakers) >= 2
    # relabel one segment of the second speaker that overlaps nobody as the first speaker
    index = next(i for i, (s, e, k) in enumerate(reference) if k == speakers[1] and e - s > 1.0
                 and not any(o_s < e and s < o_e for j, (o_s, o_e, _) in enumerate(reference) if j != i))
    start_s, end_s, _ = reference[index]
    hypothesis = list(reference)
    hypothesis[index] = (start_s, end_s, speakers[0])
    row = score(one_file(reference), one_file(hypothesis), collar_s=0.0).files[0]
    assert_parts(row, confusion_s=end_s - start_s)


def test_folders_score_every_reference_file_and_overall(tmp_path):
    ref_dir, hyp_dir = tmp_path / "ref", tmp_path / "hyp"
    ref_dir.mkdir()
    hyp_dir.mkdir()
    for name in ("abjxc", "afjiv", "vbjlx"):
        shutil.copy(rttm("dev", name), ref_dir)
        if name != "afjiv":
            shutil.copy(rttm("dev", name), hyp_dir)
    report = score_paths(ref_dir, hyp_dir, collar_s=0.25)
    assert [row.file_id for row in report.files] == ["abjxc", "afjiv", "vbjlx"]
    afjiv = report.files[1]
    assert_parts(afjiv, missed_s=afjiv.scored_s)  # no hypothesis: all missed
    assert report.overall.scored_s == pytest.approx(sum(row.scored_s for row in report.files))
    assert report.overall.der == pytest.approx(afjiv.scored_s / report.overall.scored_s)
    text = format_report(report)
    assert "OVERALL" in text and "abjxc" in text and "collar 0.25 s each side" in text


# ---- hand-computed toy cases ------------------------------------------------------------------------------------
def test_collar_is_per_side():
    reference = one_file([(10.0, 20.0, "A")])
    hypothesis = one_file([(10.5, 20.0, "A")])  # 0.5 s missed after the reference start
    assert_parts(score(reference, hypothesis, collar_s=0.0).files[0], missed_s=0.5, scored_s=10.0)
    # 0.25 s each side of 10.0 and 20.0: scored speech 10.25-19.75, missed 10.25-10.5
    assert_parts(score(reference, hypothesis, collar_s=0.25).files[0], missed_s=0.25, scored_s=9.5)
    assert_parts(score(reference, hypothesis, collar_s=0.5).files[0], missed_s=0.0, scored_s=9.0)


def test_same_speaker_overlap_is_unioned_before_scoring():
    reference = one_file([(0.0, 5.0, "A"), (4.0, 8.0, "A")])
    hypothesis = one_file([(0.0, 8.0, "B")])
    assert_parts(score(reference, hypothesis, collar_s=0.0).files[0], scored_s=8.0)
    # no collar at 4.0 and 5.0: they are inside A's continuous speech
    assert_parts(score(reference, hypothesis, collar_s=0.25).files[0], scored_s=7.5)
    # and A overlapping itself is not overlapped speech
    assert_parts(score(reference, hypothesis, collar_s=0.0, skip_overlap=True).files[0], scored_s=8.0)
    assert union_per_speaker([(4.0, 8.0, "A"), (0.0, 5.0, "A"), (8.0, 9.0, "A"), (1.0, 2.0, "B")]) == [
        (0.0, 9.0, "A"), (1.0, 2.0, "B")]


def test_overlap_scored_by_default_and_skipped_on_request():
    reference = one_file([(0.0, 10.0, "A"), (5.0, 15.0, "B")])
    hypothesis = one_file([(0.0, 15.0, "x")])
    # x -> A: 5-10 misses B (5 s), 10-15 says A for B (5 s confusion); scored 10 + 10 s
    assert_parts(score(reference, hypothesis, collar_s=0.0).files[0], missed_s=5.0, confusion_s=5.0, scored_s=20.0)
    # without 5-10: A 0-5 and B 10-15, one of them confused
    assert_parts(score(reference, hypothesis, collar_s=0.0, skip_overlap=True).files[0], confusion_s=5.0,
                 scored_s=10.0)


def test_jer_of_a_missing_speaker():
    reference = one_file([(0.0, 10.0, "A"), (10.0, 20.0, "B")])
    hypothesis = one_file([(0.0, 10.0, "x")])
    row = score(reference, hypothesis, collar_s=0.0).files[0]
    assert row.jer == pytest.approx(0.5)  # mean over reference speakers of (0, 1)
    assert_parts(row, missed_s=10.0, scored_s=20.0)


# ---- scored region with and without a UEM ---------------------------------------------------------------------
def test_without_uem_reference_and_hypothesis_extents_are_scored(tmp_path):
    """dscore's convention: false alarms before the first and after the last reference turn count."""
    reference = one_file([(10.0, 20.0, "A")])
    hypothesis = one_file([(0.0, 2.0, "A"), (10.0, 20.0, "A"), (25.0, 27.0, "A")])
    assert_parts(score(reference, hypothesis, collar_s=0.0).files[0], false_alarm_s=4.0, scored_s=10.0)

    uem_all = tmp_path / "all.uem"
    uem_all.write_text("f 1 0.0 30.0\n")
    assert_parts(score(reference, hypothesis, collar_s=0.0, uem=read_uem(uem_all)).files[0], false_alarm_s=4.0)
    uem_ref = tmp_path / "ref.uem"
    uem_ref.write_text(";; md-eval's span: first to last reference turn\nf 1 10.0 20.0\n")
    assert_parts(score(reference, hypothesis, collar_s=0.0, uem=read_uem(uem_ref)).files[0], false_alarm_s=0.0)
    two = tmp_path / "two.uem"
    two.write_text("f 1 0.0 1.0\nf 1 12.0 26.0\n")  # 1 s + 1 s of false alarm, 8 s of speech
    assert_parts(score(reference, hypothesis, collar_s=0.0, uem=read_uem(two)).files[0], false_alarm_s=2.0,
                 scored_s=8.0)


def test_uem_must_cover_every_reference_file(tmp_path):
    uem = tmp_path / "x.uem"
    uem.write_text("g 1 0 10\n")
    with pytest.raises(InputError, match="UEM has no entry for reference file 'f'"):
        score(one_file([(0.0, 1.0, "A")]), one_file([(0.0, 1.0, "A")]), uem=read_uem(uem))


def test_malformed_uem_line_named(tmp_path):
    uem = tmp_path / "bad.uem"
    uem.write_text("f 1 0 10\nf 1 ten 20\n")
    with pytest.raises(InputError, match=rf"{uem}:2: malformed UEM line"):
        read_uem(uem)


# ---- bad input ------------------------------------------------------------------------------------------------
def test_malformed_rttm_line_named(tmp_path):
    good = rttm("dev", "abjxc").read_text().splitlines()
    bad = tmp_path / "abjxc.rttm"
    bad.write_text("\n".join([good[0], "SPEAKER abjxc 1 8.68 <NA> <NA> <NA> spk00 <NA> <NA>", good[1]]) + "\n")
    with pytest.raises(InputError, match=rf"{bad}:2: malformed RTTM line"):
        score_paths(bad, rttm("dev", "abjxc"))


def test_disjoint_file_ids_and_empty_folders_are_refused(tmp_path):
    with pytest.raises(InputError, match="no file id is in both"):
        score_paths(rttm("dev", "abjxc"), rttm("dev", "afjiv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .rttm files"):
        load_rttms(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        load_rttms(tmp_path / "absent.rttm")


def test_hypothesis_only_files_are_reported_not_scored(tmp_path):
    hyp = tmp_path / "hyp.rttm"
    hyp.write_text(rttm("dev", "abjxc").read_text() + to_rttm([(0.0, 3.0, "z")], "other"))
    report = score_paths(rttm("dev", "abjxc"), hyp)
    assert [row.file_id for row in report.files] == ["abjxc"]
    assert report.unscored_hyp_files == ["other"]
    assert "not scored (no reference): other" in format_report(report)


# ---- the command line -----------------------------------------------------------------------------------------
def _script():
    spec = importlib.util.spec_from_file_location("score_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prints_per_file_and_overall(capsys):
    from pipeline.cli import run_main

    script = _script()
    path = rttm("dev", "afjiv")
    assert run_main(script.main, script.get_parser(), ["--ref", str(path), "--hyp", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# collar 0.25 s each side") and "overlap scored" in out[0]
    assert out[1].split() == ["file", "DER%", "miss%", "FA%", "conf%", "JER%", "scored_s"]
    assert out[2].split()[:6] == ["afjiv", "0.00", "0.00", "0.00", "0.00", "0.00"]
    assert out[3].split()[0] == "OVERALL"


def test_script_bad_rttm_is_one_line(tmp_path, capsys):
    from pipeline.cli import run_main

    script = _script()
    bad = tmp_path / "bad.rttm"
    bad.write_text("SPEAKER f 1 0.0\n")
    code = run_main(script.main, script.get_parser(), ["--ref", str(bad), "--hyp", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"{bad}:1: malformed RTTM line" in err and "Traceback" not in err


def test_script_help_documents_the_conventions(capsys):
    script = _script()
    text = " ".join(script.get_parser().format_help().split())
    assert "0.25 s on EACH side" in text and "collar=2*COLLAR" in text
    assert "earliest to the latest segment of reference and hypothesis" in text
