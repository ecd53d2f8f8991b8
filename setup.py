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
    package_data={"models": ["checkpoints.tsv"], "configs": ["*.yaml"]},
    install_requires=[
        # torch/torchaudio 2.11 is the newest pair with a torchaudio release; speechbrain needs torchaudio.
        "torch>=2.4,<2.12",
        "torchaudio>=2.4,<2.12",
        "numpy>=1.24",
        "scipy>=1.10",
        # scenedetect 0.7 requires opencv-python itself; a second, headless OpenCV would share its files.
        "opencv-python>=4.8",
        # PyAV bundles FFmpeg's libraries: no system ffmpeg program is needed.
        "av>=12",
        "scenedetect>=0.6.4,<0.8",
        # webrtcvad-wheels ships the same `webrtcvad` module as prebuilt wheels (no compiler, no pkg_resources).
        "webrtcvad-wheels>=2.0.11",
        "silero-vad>=5.1",
        "speechbrain>=1.0",
        "python_speech_features>=0.6",
        "PyYAML>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "pyannote.core>=5",
        "pyannote.metrics>=3.2",
    ],
    extras_require={"test": ["pytest>=7"]},
)
