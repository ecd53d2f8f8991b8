"""Train or fine-tune a sync model on the stage-1 crops of cached videos (``scripts/train_sync.py``).

Steps: pick the references, split them by video into training and validation, load their tracks, then
repeat: draw a batch of lip windows with aligned and shifted audio (pipeline/train/data.py), compute the
model's loss through its adapter (pipeline/train/adapters.py), step the optimiser. Every
``val_every_steps`` the fixed validation set is scored; the best model by validation loss is written in the
published format under the file name stage 2 loads (``RUN/syncnet.model``), so ``run_syncnet.py
--weights_dir RUN`` uses it unchanged. ``RUN/last.pt`` holds everything needed to ``--resume`` (weights,
optimiser, step, random states, history) and is written at every validation, at the end and on Ctrl-C.
``RUN/losses.csv`` and ``RUN/losses.png`` record the curves; ``RUN/train.json`` the settings and split.

Deterministic for a seed on the CPU (same split, windows, initial weights and arithmetic); on CUDA the
forward pass runs under autocast (``train.cuda_precision``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache import atomic_path, write_bytes_atomic
from pipeline.config import Config, replace_checked
from pipeline.errors import CheckpointError, InputError, first_line
from pipeline.formats import TRAIN_LAST_FILE, TRAIN_OPTIMIZERS
from pipeline.runtime import apply_runtime
from pipeline.train.adapters import make_adapter
from pipeline.train.data import (
    SamplingSettings,
    TrackData,
    WindowBatch,
    choose_references,
    load_reference,
    require_windows,
    sample_batch,
    split_references,
    validation_batches,
)

LAST_FILE = TRAIN_LAST_FILE
CSV_FILE = "losses.csv"
PNG_FILE = "losses.png"
INFO_FILE = "train.json"
OPTIMIZERS = TRAIN_OPTIMIZERS
PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}

# progress(step, total_steps, train_loss, samples_per_s) after each step
ProgressHook = Callable[[int, int, float, float], None]


@dataclass
class TrainResult:
    """What a run ended with."""

    out_dir: Path
    checkpoint: Path  # the best model, in the published format
    steps_done: int
    best_val_loss: float
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = math.nan  # median lip windows per second of the training steps


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation settings (config section ``train``, with command-line overrides checked by the config's
    rules, pipeline/settings.py ``TrainConfig``)."""

    model: str
    steps: int
    batch_size: int
    optimizer: str
    lr: float
    lr_final: float
    momentum: float
    weight_decay: float
    val_fraction: float
    val_windows: int
    val_every_steps: int
    bn_recalibration_windows: int
    freeze_convolutions: bool
    seed: int
    cuda_precision: str

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> TrainSettings:
        """``cfg.train`` with ``overrides`` (None: not given), each refused as a bad ``--set train.NAME`` is."""
        train = replace_checked(cfg.train, **{k: v for k, v in overrides.items() if v is not None})
        return cls(**{name: train[name] for name in cls.__dataclass_fields__})

    def lr_at(self, step: int) -> float:
        """Log-linear from ``lr`` at step 0 to ``lr_final`` at the last step."""
        frac = step / max(1, self.steps - 1)
        return float(math.exp(math.log(self.lr) + frac * (math.log(self.lr_final) - math.log(self.lr))))


# ---- data --------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """Training and validation tracks, split by video."""

    train_refs: list[str]
    val_refs: list[str]
    train_tracks: list[TrackData]
    val_tracks: list[TrackData]


def load_data(data_dir: str | Path, references: Sequence[str] | None, adapter: Any, settings: TrainSettings,
              sampling: SamplingSettings) -> TrainData:
    """Split the references by video and load their tracks; InputError when there is too little data."""
    refs = choose_references(data_dir, references)
    train_refs, val_refs = split_references(refs, settings.val_fraction, settings.seed)
    train = [t for ref in train_refs for t in load_reference(data_dir, ref, adapter)]
    val = [t for ref in val_refs for t in load_reference(data_dir, ref, adapter)]
    return TrainData(train_refs, val_refs, require_windows(train, "training", sampling, train_refs),
                     require_windows(val, "validation", sampling, val_refs))


# ---- one step ----------------------------------------------------------------------------------
def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def batch_loss(adapter, model: torch.nn.Module, batch: WindowBatch, device: torch.device,
               precision: str) -> torch.Tensor:
    """The adapter's loss on one batch (forward pass only)."""
    with _autocast(device, precision):
        return adapter.loss(model, batch, device)


@torch.inference_mode()
def validation_loss(adapter, model: torch.nn.Module, batches: Sequence[WindowBatch], device: torch.device,
                    precision: str) -> float:
    """Mean loss over the fixed validation batches, in eval mode (weighted by batch size)."""
    was_training = model.training
    model.eval()
    total = sum(float(batch_loss(adapter, model, b, device, precision)) * b.size for b in batches)
    model.train(was_training)
    return total / sum(b.size for b in batches)


def set_train_mode(model: torch.nn.Module, frozen: Sequence[torch.nn.Module]) -> None:
    """Training mode, except the frozen parts (their BatchNorm keeps its measured statistics)."""
    model.train()
    for module in frozen:
        module.eval()


def freeze(modules: Sequence[torch.nn.Module]) -> None:
    """Stop the parameters of ``modules`` from learning."""
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)


@torch.no_grad()
def recalibrate_batchnorm(adapter, model: torch.nn.Module, batches: Sequence[WindowBatch],
                          device: torch.device, precision: str, frozen: Sequence[torch.nn.Module] = ()) -> None:
    """Recompute every BatchNorm's running mean and variance as plain averages over ``batches`` ("precise BN").

    Stage 2 runs the network in eval mode, on running statistics; during training those trail the weights
    (an exponential average with momentum 0.1 over earlier weights), which early in training leaves eval-mode
    embeddings far from the trained ones. Weights are not touched.
    """
    kept = {id(m) for part in frozen for m in part.modules()}  # frozen parts keep their statistics
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in kept]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    set_train_mode(model, frozen)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the mean over the batches
    try:
        for batch in batches:
            batch_loss(adapter, model, batch, device, precision)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        if was_training:
            set_train_mode(model, frozen)
        else:
            model.eval()


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)


# ---- files -------------------------------------------------------------------------------------
def save_torch_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: an interrupted save leaves the old file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_history(out_dir: Path, history: list[dict[str, float]]) -> None:
    """``losses.csv`` (step, train_loss, val_loss, lr, samples_per_s; empty where not measured) and ``losses.png``."""
    columns = ("step", "train_loss", "val_loss", "lr", "samples_per_s")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow(["" if row.get(c) is None or (isinstance(row.get(c), float) and math.isnan(row[c]))
                         else (int(row[c]) if c == "step" else f"{row[c]:.6g}") for c in columns])
    write_bytes_atomic(out_dir / CSV_FILE, text.getvalue().encode())
    plot_losses(history, out_dir / PNG_FILE)


def plot_losses(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Training loss per step (light) and its running mean, and the validation loss, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.array([r["step"] for r in history], dtype=np.float64)
    train = np.array([r.get("train_loss", math.nan) for r in history], dtype=np.float64)
    val = [(r["step"], r["val_loss"]) for r in history if r.get("val_loss") is not None and not math.isnan(r["val_loss"])]
    fig = Figure(figsize=(7, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ok = ~np.isnan(train)
    if ok.any():
        ax.plot(steps[ok], train[ok], color=(0.122, 0.467, 0.706), alpha=0.3, linewidth=0.8, label="training (per step)")
        width = max(1, int(ok.sum()) // 20)
        smooth = np.convolve(train[ok], np.ones(width) / width, mode="valid")
        ax.plot(steps[ok][width - 1:], smooth, color=(0.122, 0.467, 0.706), linewidth=1.6,
                label=f"training (mean of {width})")
    if val:
        ax.plot(*zip(*val), "o-", color=(1.0, 0.498, 0.055), linewidth=1.6, markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "sync model training")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".part.png") as tmp:
        fig.savefig(tmp, format="png")
    return path


# ---- the run -----------------------------------------------------------------------------------
def _rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": json.dumps(rng.bit_generator.state), "torch": torch.get_rng_state()}


def _restore_rng(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = json.loads(state["numpy"])
    torch.set_rng_state(state["torch"])


def _load_resume(path: Path, model_name: str) -> dict:
    if not path.is_file():
        raise InputError(f"--resume: no {LAST_FILE} in {path.parent} (start without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read ({first_line(err, 160)}); start again without --resume") from None
    if not isinstance(state, dict) or state.get("model_name") != model_name:
        raise InputError(f"{path} is a run of {state.get('model_name') if isinstance(state, dict) else 'unknown'}, "
                         f"not {model_name}")
    return state


def _build_model(adapter: Any, settings: TrainSettings, sampling: SamplingSettings, data: TrainData,
                 init: str | Path | None, resume: bool, device: torch.device) -> tuple[torch.nn.Module, list]:
    """The model on ``device`` in training mode (from ``init`` unless resuming) and its frozen convolutions,
    whose BatchNorm statistics a fresh run measures once before freezing them."""
    model = adapter.build()
    if init is not None and not resume:
        init_path = Path(init)
        if not init_path.is_file():
            raise CheckpointError(f"--init checkpoint not found: {init_path}")
        adapter.load_init(model, init_path)
    model.to(device).train()
    frozen = adapter.convolutions(model) if settings.freeze_convolutions else []
    if frozen and not resume:  # measure the statistics the frozen convolutions will use, once
        recalibrate_batchnorm(adapter, model, validation_batches(
            data.train_tracks, settings.bn_recalibration_windows, settings.batch_size, sampling,
            np.random.default_rng([settings.seed, 0, 1])), device, settings.cuda_precision)
    freeze(frozen)
    set_train_mode(model, frozen)
    if frozen:
        adapter.cache_trunk_features()
    return model, frozen


def _write_info(out: Path, settings: TrainSettings, sampling: SamplingSettings, data: TrainData,
                init: str | Path | None, checkpoint_file: str) -> None:
    """``train.json``: the settings and the split."""
    info = {"model": settings.model, "settings": settings.__dict__, "sampling": sampling.__dict__,
            "train_references": data.train_refs, "val_references": data.val_refs,
            "train_tracks": [t.name for t in data.train_tracks], "val_tracks": [t.name for t in data.val_tracks],
            "init": str(init) if init else None, "checkpoint": checkpoint_file}
    write_bytes_atomic(out / INFO_FILE, json.dumps(info, indent=1).encode())


@dataclass
class _Run:
    """One run's parts, and what it has done so far (``last.pt`` keeps that for ``--resume``)."""

    adapter: Any
    model: torch.nn.Module
    frozen: list
    optimizer: torch.optim.Optimizer
    settings: TrainSettings
    sampling: SamplingSettings
    data: TrainData
    val_batches: list[WindowBatch]
    device: torch.device
    out: Path
    rng: np.random.Generator
    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # lip windows per second of each training step

    def resume(self) -> None:
        """Continue from ``last.pt``: weights, optimiser, step, best loss, history and random states."""
        state = _load_resume(self.out / LAST_FILE, self.settings.model)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best_val, self.best_step = int(state["step"]), float(state["best_val"]), int(state["best_step"])
        self.history = json.loads(state["history"])
        _restore_rng(self.rng, state["rng"])

    def save_last(self) -> None:
        """``last.pt``: everything ``--resume`` needs."""
        save_torch_atomic({"model_name": self.settings.model, "model": self.model.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "step": self.step, "best_val": self.best_val,
                           "best_step": self.best_step, "history": json.dumps(self.history),
                           "rng": _rng_state(self.rng)},
                          self.out / LAST_FILE)

    def train_step(self, progress: ProgressHook | None) -> None:
        """One optimiser step on a fresh batch, recorded in the history."""
        started = time.perf_counter()
        lr = self.settings.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = sample_batch(self.data.train_tracks, self.settings.batch_size, self.sampling, self.rng)
        loss = batch_loss(self.adapter, self.model, batch, self.device, self.settings.cuda_precision)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        rate = batch.size / (time.perf_counter() - started)
        self.rates.append(rate)
        self.history.append({"step": self.step, "train_loss": float(loss.detach()), "lr": lr, "samples_per_s": rate})
        if progress is not None:
            progress(self.step, self.settings.steps, float(loss.detach()), rate)

    def validate(self) -> None:
        """Score the validation set (after recalibrating BatchNorm); keep the model if it is the best so far."""
        settings = self.settings
        calib_rng = np.random.default_rng([settings.seed, self.step])  # its own stream: training's is untouched
        recalibrate_batchnorm(self.adapter, self.model, validation_batches(
            self.data.train_tracks, settings.bn_recalibration_windows, settings.batch_size, self.sampling, calib_rng),
            self.device, settings.cuda_precision, self.frozen)
        val = validation_loss(self.adapter, self.model, self.val_batches, self.device, settings.cuda_precision)
        set_train_mode(self.model, self.frozen)
        self.history[-1]["val_loss"] = val
        if val < self.best_val:
            self.best_val, self.best_step = val, self.step
            save_torch_atomic(self.adapter.state_to_save(self.model, self.optimizer, self.step),
                              self.out / self.adapter.checkpoint_file)
        write_history(self.out, self.history)
        self.save_last()


def train_sync_model(data_dir: str | Path, out_dir: str | Path, cfg: Any, references: Sequence[str] | None = None,
                     init: str | Path | None = None, resume: bool = False, device: torch.device | str = "cpu",
                     progress: ProgressHook | None = None, **overrides: Any) -> TrainResult:
    """Train (or fine-tune from ``init``) the sync model ``train.model`` on the cached crops of ``references``.

    ``overrides``: ``steps``, ``batch_size``, ``model``... replacing config values. Ctrl-C saves ``last.pt``
    and re-raises KeyboardInterrupt. InputError for too little data, CheckpointError for a bad ``init``.
    """
    apply_runtime(cfg.runtime)
    settings = TrainSettings.from_config(cfg, **overrides)
    sampling = SamplingSettings.from_config(cfg.train)
    adapter = make_adapter(settings.model, cfg)
    device = torch.device(device)
    out = Path(out_dir)
    data = load_data(data_dir, references, adapter, settings, sampling)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model, frozen = _build_model(adapter, settings, sampling, data, init, resume, device)
    optimizer = make_optimizer(model, settings)
    val_batches = validation_batches(data.val_tracks, settings.val_windows, settings.batch_size, sampling,
                                     settings.seed + 1)
    run = _Run(adapter, model, frozen, optimizer, settings, sampling, data, val_batches, device, out, rng)
    if resume:
        run.resume()
    _write_info(out, settings, sampling, data, init, adapter.checkpoint_file)
    try:
        while run.step < settings.steps:
            run.train_step(progress)
            if run.step % settings.val_every_steps == 0 or run.step == settings.steps:
                run.validate()
    except KeyboardInterrupt:  # keep what was learnt: --resume continues from here
        run.save_last()
        if run.history:
            write_history(out, run.history)
        raise
    return TrainResult(out, out / adapter.checkpoint_file, run.step, run.best_val, run.best_step, run.history,
                       float(np.median(run.rates)) if run.rates else math.nan)
