"""Install the audio-visual diarisation pipeline (pipeline/, models/) and its dependencies."""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "pipeline" / "version.py").read_text(), version)

setup(
    name="av-diarise",
    version=version["__version__"],
    description=(
        "Audio-visual speaker diarisation of videos: S3FD face tracks, SyncNet, "
        "VAD and speaker-embedding clustering (VoxConverse pipeline)"
    ),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # configs/ ships beside the packages so that a non-editable install finds configs/default.yaml too
    packages=["pipeline", "models", "configs"],
    # models/backends: the improved mode's fitted speaker back-end transforms (Resemblyzer's GE2E) with their sha256
    package_data={"models": ["checkpoints.tsv", "backends/*.npz", "backends/*.sha256"], "configs": ["*.yaml"]},
    # Every pin is a tested set with an upper bound at the next release line that could break us: a fresh
    # install today and after upstream releases resolves to versions that import and run every stage.
    install_requires=[
        # torch and torchaudio work only as the exact pair they were built together (torchaudio 2.11.1 needs a
        # newer torch than 2.11.0); only ECAPA (speechbrain) imports torchaudio, ResNetSE34V2's front end is torch.
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "numpy>=1.24,<3",
        "scipy>=1.10,<2",
        # scenedetect 0.7 requires opencv-python itself; a second, headless OpenCV would share its files.
        "opencv-python>=4.8,<6",
        # PyAV bundles FFmpeg's libraries: no system ffmpeg program is needed.
        "av>=12,<19",
        "scenedetect>=0.6.4,<0.8",
        # webrtcvad-wheels ships the same `webrtcvad` module as prebuilt wheels (no compiler, no pkg_resources).
        "webrtcvad-wheels>=2.0.11,<3",
        "silero-vad>=5.1,<7",
        "speechbrain>=1.0,<1.2",
        "python_speech_features>=0.6,<0.7",
        # Wav2Lip's lip-sync expert was trained on librosa's STFT and Slaney mel basis: the library gives its exact
        # front end (checked against a transcription of Wav2Lip's audio.py) instead of hand-written filters.
        "librosa>=0.10,<2",
        "PyYAML>=6,<7",
        "tqdm>=4.60,<5",
        "matplotlib>=3.7,<4",
        "pyannote.core>=5,<7",
        "pyannote.metrics>=3.2,<5",
    ],
    extras_require={
        # Ray runs a corpus over many machines (scripts/diarize_corpus.py --ray); not needed on one machine.
        "cluster": ["ray>=2.40,<3"],
        "test": ["pytest>=7,<10", "ruff>=0.8,<1", "ray>=2.40,<3"],
    },
)
