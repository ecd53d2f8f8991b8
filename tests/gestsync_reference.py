"""Transcriptions of the steps around GestSync's network, from Sindhu-Hegde/gestsync @ 36a4759, as test oracles.

Copied line by line (module-level ``args`` and ``model`` turned into parameters, printing and ``exit`` turned
into return values, file and GPU handling dropped), so the project's own code can be compared with what the
authors run. Not used by the package.

- ``crop_video``: ``preprocess/inference_preprocess.py`` (the person crop of the active-speaker demo);
- ``create_online_sync_negatives``, ``calc_av_scores``, ``calc_att_map``, ``calc_optimal_av_offset``:
  ``inference_syncoffset.py`` (the offset search, ``stride=5``, ``n_negative_samples=100``);
- ``pad_video_frames``, ``load_spectrogram_windows``, ``predict_active_speaker_scores``:
  ``inference_activespeaker.py`` (``load_rgb_masked_frames``' edge padding, ``load_spectrograms``' edge
  padding, and ``predict_active_speaker``'s per-speaker score before the argmax over speakers).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from scipy import signal
from torch import nn


# ---- preprocess/inference_preprocess.py ----------------------------------------------------------
def crop_video(track: dict, frames_bgr, crop_scale: float = 0, tight_scale: float = 1) -> tuple[list, dict]:
    """``crop_video(opt, track, cropfile)``: the 480x270 BGR crops of a person track (``track['frame']``,
    ``track['bbox']``) from ``frames_bgr`` (the 25 fps video's frames, indexed by frame number), and ``dets``."""
    dets = {'x': [], 'y': [], 's': [], 'bbox': track['bbox'], 'frame': track['frame']}

    for det in track['bbox']:
        width = (det[2] - det[0]) * tight_scale
        height = (det[3] - det[1]) * tight_scale
        center_x = (det[0] + det[2]) / 2
        center_y = (det[1] + det[3]) / 2

        dets['s'].append(max(height, width) / 2)
        dets['y'].append(center_y)  # crop center y
        dets['x'].append(center_x)  # crop center x

    # Smooth detections
    dets['s'] = signal.medfilt(dets['s'], kernel_size=13)
    dets['x'] = signal.medfilt(dets['x'], kernel_size=13)
    dets['y'] = signal.medfilt(dets['y'], kernel_size=13)

    crops = []
    for fidx, frame in enumerate(track['frame']):
        cs = crop_scale
        bs = dets['s'][fidx]  # Detection box size
        bsi = int(bs * (1 + 2 * cs))  # Pad videos by this amount

        image = frames_bgr[int(frame)]
        frame = np.pad(image, ((bsi, bsi), (bsi, bsi), (0, 0)), 'constant', constant_values=(110, 110))

        my = dets['y'][fidx] + bsi  # BBox center Y
        mx = dets['x'][fidx] + bsi  # BBox center X

        face = frame[int(my - bs):int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)):int(mx + bs * (1 + cs))]
        crops.append(cv2.resize(face, (480, 270)))
    return crops, dets


# ---- inference_syncoffset.py ---------------------------------------------------------------------
def create_online_sync_negatives(vid_emb, aud_emb, num_avg_frames: int, n_negative_samples: int = 100, stride=5):
    """As upstream; returns None where upstream prints "Video is too short ..." and exits (or, with fewer
    audio windows than ``num_avg_frames``, where ``unfold`` raises)."""
    slice_size = num_avg_frames
    if aud_emb.shape[-1] < slice_size:
        return None
    aud_emb_posneg = aud_emb.squeeze(1).unfold(-1, slice_size, stride)
    aud_emb_posneg = aud_emb_posneg.permute([0, 2, 1, 3])
    aud_emb_posneg = aud_emb_posneg[:, :int(n_negative_samples / stride) + 1]

    pos_idx = (aud_emb_posneg.shape[1] // 2)
    pos_idx_frame = pos_idx * stride

    min_offset_frames = -(pos_idx) * stride
    max_offset_frames = (aud_emb_posneg.shape[1] - pos_idx - 1) * stride

    vid_emb_pos = vid_emb[:, :, pos_idx_frame:pos_idx_frame + slice_size]
    if vid_emb_pos.shape[2] != slice_size:
        return None

    return vid_emb_pos, aud_emb_posneg, pos_idx_frame, stride, (min_offset_frames, max_offset_frames)


def calc_att_map(vid_emb, aud_emb, logits_scale: nn.Module):
    vid_emb = vid_emb[:, :, None]
    aud_emb = aud_emb.transpose(1, 2)
    scores = (vid_emb * aud_emb).sum(1)  # run_func_in_parts(lambda x, y: (x * y).sum(1), ..., dim=3): the same sum
    scores = logits_scale(scores[..., None]).squeeze(-1)
    return scores


def calc_av_scores(vid_emb, aud_emb, logits_scale: nn.Module):
    scores = calc_att_map(vid_emb, aud_emb, logits_scale)
    scores = scores.mean(-1)
    return scores


def calc_optimal_av_offset(vid_emb, aud_emb, logits_scale: nn.Module, num_avg_frames: int = 50):
    """``(offset in GestSync's sign, candidate scores, (min, max) offsets)``; None where upstream exits.

    ``vid_emb``: ``[1, 1024, V]``, ``aud_emb``: ``[1, 1, 1024, A]`` L2-normalised, as the main block builds them.
    """
    made = create_online_sync_negatives(vid_emb, aud_emb, num_avg_frames)
    if made is None:
        return None
    pos_vid_emb, all_aud_emb, pos_idx, stride, offset_range = made
    scores = calc_av_scores(pos_vid_emb, all_aud_emb, logits_scale)
    offset = scores.argmax() * stride - pos_idx
    return offset.item(), scores, offset_range


def syncoffset_embeddings(video_emb: torch.Tensor, audio_emb: torch.Tensor, num_video_windows: int):
    """The main block's shapes: per-window embeddings ``[V, 1024]`` and ``[A, 1024]`` (unnormalised) to
    ``[1, 1024, V]`` and ``[1, 1, 1024, A']``, with ``load_spectrograms``' truncation of the audio windows to
    the video's count (``spec = spec[:num_frames]``) and the L2 normalisation."""
    audio_emb = audio_emb[:num_video_windows]
    video_emb = torch.nn.functional.normalize(video_emb[:, :, None], p=2, dim=1)
    audio_emb = torch.nn.functional.normalize(audio_emb[:, :, None], p=2, dim=1)
    audio_emb = torch.stack(torch.split(audio_emb, 1, dim=0), dim=2).squeeze(3)[:, None]
    video_emb = torch.stack(torch.split(video_emb, 1, dim=0), dim=2).squeeze(3)
    return video_emb, audio_emb


# ---- inference_activespeaker.py ------------------------------------------------------------------
def pad_video_frames(input_frames: np.ndarray) -> np.ndarray:
    """``load_rgb_masked_frames`` after masking and ``/ 255.``: the frames edge-padded by 12 at each end.
    Upstream then stacks window i as padded frames ``i .. i + 24`` for ``i + 25 <= len`` (``[T, 25, ...]``);
    the tests take those slices one batch at a time (a whole clip's stack does not fit in memory here)."""
    return np.pad(input_frames, ((12, 12),) + ((0, 0),) * (np.ndim(input_frames) - 1), 'edge')


def load_spectrogram_windows(spec: np.ndarray, window_frames: int = 25, stride: int = 4) -> np.ndarray:
    """``load_spectrograms`` after ``wav2filterbanks``: ``[S, 80]`` -> ``[A + 24, 100, 80]``."""
    spec = np.array([spec[i:i + (window_frames * stride), :] for i in range(0, spec.shape[0], stride)
                     if (i + (window_frames * stride) <= spec.shape[0])])
    pad_frames = (window_frames // 2)
    spec = np.pad(spec, ((pad_frames, pad_frames), (0, 0), (0, 0)), 'edge')
    return spec


def predict_active_speaker_scores(video_embedding: torch.Tensor, audio_embedding: torch.Tensor,
                                  logits_scale: nn.Module, global_score: str, num_avg_frames: int = 25):
    """``predict_active_speaker``'s ``score`` of one speaker: ``output`` (the scaled cosine per frame) and
    its ``num_avg_frames`` average (``global_score == "False"``) or mean (``"True"``).

    ``video_embedding``: ``[T, 1024]`` (``get_embeddings``' time-averaged ``forward_vid``), ``audio_embedding``:
    ``[T, 1024, 1]`` (``forward_aud``); the video is cut to the spectrogram's length first, as
    ``load_masked_input_frames`` does."""
    cos = nn.CosineSimilarity(dim=1)
    audio_embedding = audio_embedding.squeeze(2)
    sim = cos(video_embedding, audio_embedding)
    output = logits_scale(sim.unsqueeze(-1)).squeeze(-1)
    if global_score == "True":
        score = output.mean(0)
    else:
        output_batch = output.unfold(0, num_avg_frames, 1)
        score = torch.mean(output_batch, axis=-1)
    return output.detach().numpy(), score.detach().numpy()
