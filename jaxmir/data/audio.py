"""Audio loading for the feature extractors: decode, check, mix to mono, resample.

`load_audio` decodes with soundfile. Formats that libsndfile does not know (m4a, ...) fall
back to librosa/audioread. Resampling is soxr's HQ mode, as librosa's default ``soxr_hq``.

A bad file raises `AudioError` (a ``ValueError``) naming the file and the reason:

* it is missing, unreadable or cannot be decoded;
* it is truncated. A WAV/AIFF whose data chunk is shorter than its header says is caught,
  even though libsndfile would otherwise return the shorter audio in silence;
* it is empty (0 samples);
* it holds NaN or inf samples.

`normalise_level` scales a recording so its loud passages sit at one level: models trained on
renderings at one level read a recording 20 dB quieter as a different input (the music task's
shipped model lost 0.10 note F1 at -20 dB and 0.5 at -40 dB when read as recorded). Files to
transcribe are read so (`load_audio(..., level_db=LEVEL_DB)`, through `AudioPiece.input`) by
the music, vocal_contour, patch_cnn and drum tasks; their training data is read as rendered or
recorded (levelling it cost the music task 0.06-0.10 note F1). The vocal task's CFP and the
chord task's per-frame chroma do not depend on the level to begin with.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np


class AudioError(ValueError):
    """An audio file or array that cannot be used. ``path`` and ``reason`` are attributes."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def validate_audio(x: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Return ``x`` unchanged if it has samples and all are finite, else raise `AudioError`."""
    x = np.asarray(x)
    if x.size == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.issubdtype(x.dtype, np.number):
        raise AudioError(path, f"audio samples must be numeric, got dtype {x.dtype}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1))
        nan = int(np.isnan(x).sum())
        raise AudioError(
            path,
            f"{bad.size} non-finite samples ({nan} NaN, {bad.size - nan} inf), "
            f"first at flat index {int(bad[0])}",
        )
    return x


def _chunks(f, pos: int, size: int, endian: str = "<"):
    """(position, id, declared size) of each chunk header of the open file `f` from `pos` on,
    as the declared sizes chain them (a RIFF or IFF file), while a header fits in `size`."""
    while pos + 8 <= size:
        f.seek(pos)
        cid, csize = struct.unpack(endian + "4sI", f.read(8))
        yield pos, cid, csize
        pos += 8 + csize + (csize & 1)


def chunk_truncation(path: Path) -> str | None:
    """If a RIFF/RF64 WAV or an AIFF file's audio chunk is cut short, say how; else None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12:
                return None
            if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
                endian = ">" if head[:4] == b"RIFX" else "<"
                target = b"data"
            elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                endian, target = ">", b"SSND"
            else:
                return None
            for pos, cid, csize in _chunks(f, 12, size, endian):
                if cid == target:
                    if head[:4] == b"RF64" or csize in (0, 0xFFFFFFFF):
                        return None  # sizes live in ds64 or were never filled in (streamed)
                    have = size - pos - 8
                    if csize > have:
                        return (
                            f"truncated file: the {target.decode()} chunk declares {csize} "
                            f"bytes but only {have} are present"
                        )
                    return None
    except (OSError, struct.error):
        return None
    return None


def unfinished_header(path: Path) -> str | None:
    """If a RIFF WAV's data chunk declares 0 bytes and audio follows it (a recorder that
    stopped before writing its sizes: decoders read no samples), say so; else None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            for pos, cid, csize in _chunks(f, 12, size):
                if cid == b"data":
                    follow = size - pos - 8
                    if csize == 0 and follow > 0 and not _chunks_to_end(f, pos + 8, size):
                        return (
                            f"the header declares no audio, yet {follow} bytes of it follow (a "
                            "recording whose sizes were never written); rewrite the file with "
                            "a tool that reads past the header's lengths"
                        )
                    return None
    except (OSError, struct.error):
        return None
    return None


def _chunks_to_end(f, pos: int, size: int) -> bool:
    """Whether the bytes from `pos` to `size` are whole RIFF chunks (an empty data chunk
    followed by a LIST chunk is an empty recording, not audio without its sizes)."""
    end = pos
    for at, cid, csize in _chunks(f, pos, size):
        if not all(32 <= c < 127 for c in cid):
            return False
        end = at + 8 + csize + (csize & 1)
    return end in (size, size + 1)  # a last chunk's pad byte may be missing


def _fallback_decode(path: Path, first_error: Exception) -> tuple[np.ndarray, int]:
    """librosa/audioread for formats libsndfile does not know: (n, channels) float32, rate."""
    try:
        import librosa
    except ImportError:
        raise AudioError(path, f"cannot decode audio ({first_error})") from first_error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, rate = librosa.load(str(path), sr=None, mono=False)
    except Exception as e:  # audioread raises many unrelated types
        if type(e).__name__ == "NoBackendError":  # audioread found no program to decode it
            why = "no decoder of this format is installed (ffmpeg, which audioread uses)"
        else:
            why = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__}, not audio"
        raise AudioError(path, f"cannot decode audio (soundfile: {first_error}; {why})") from e
    y = np.asarray(y, np.float32)
    return (y[:, None] if y.ndim == 1 else y.T), int(rate)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """(n, channels) float32 samples and the file's rate."""
    try:
        import soundfile as sf
    except ImportError as e:  # pragma: no cover - soundfile is a declared dependency
        return _fallback_decode(path, e)
    try:
        info = sf.info(str(path))
    except Exception as e:  # LibsndfileError / RuntimeError: unknown or broken header
        if path.suffix[1:].upper() in sf.available_formats():
            raise AudioError(path, f"cannot decode audio ({e})") from e
        return _fallback_decode(path, e)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(path, f"undecodable or truncated audio ({e})") from e
    if info.frames > 0 and len(data) < info.frames:
        raise AudioError(
            path, f"truncated file: header says {info.frames} frames, decoded {len(data)}"
        )
    reason = chunk_truncation(path)
    if reason:
        raise AudioError(path, reason)
    return data, int(rate)


def resample(x: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """Resample along axis 0 (samples first) with soxr HQ. Falls back to librosa's soxr_hq."""
    if orig_sr == sr:
        return x
    try:
        import soxr

        return np.asarray(soxr.resample(x, orig_sr, sr, quality="HQ"), np.float32)
    except ImportError:
        import librosa

        y = librosa.resample(x.T, orig_sr=orig_sr, target_sr=sr, res_type="soxr_hq")
        return np.asarray(y.T, np.float32)


class InputWarning(UserWarning):
    """Something odd about a user's input that the command works around and says so
    (`jaxmir` prints it as one line)."""


#: A mono mix this far (dB) below its channels' mean power has them cancelling each other.
CANCEL_DB = -20.0


def mono_mix(data: np.ndarray, path: Path) -> np.ndarray:
    """The channel mean of ``(samples, channels)`` audio; where the channels cancel in it (one
    wired in opposite phase: the mean would be near silence, and a transcription empty), the
    first channel, with an `InputWarning` naming the file."""
    if data.ndim == 1 or data.shape[1] == 1:
        return data.reshape(len(data), -1)[:, 0]
    mix = data.mean(axis=1)
    flat = data.reshape(-1)  # powers without a float64 copy of a long recording
    channels = float(np.dot(flat, flat)) / max(flat.size, 1)
    mixed = float(np.dot(mix, mix)) / max(mix.size, 1)
    if channels > 1e-12 and mixed < channels * 10 ** (CANCEL_DB / 10):
        warnings.warn(
            f"{path}: its channels cancel when mixed to mono (one in opposite phase?); "
            "reading the first channel alone",
            InputWarning,
            stacklevel=3,
        )
        return data[:, 0]
    return mix


def load_audio(
    path: str | os.PathLike, sr: int, mono: bool = True, level_db: float | None = None
) -> np.ndarray:
    """Decode ``path`` and resample it to ``sr`` Hz as float32.

    Returns ``(samples,)`` if ``mono`` (the channel mean), else ``(channels, samples)``. With
    ``level_db`` (mono only) the audio is brought to that level (`normalise_level`).

    Raises:
        AudioError: Missing, unreadable, undecodable, truncated, empty, or non-finite audio.
            The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file" if not path.exists() else "not a regular file")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "file is not readable (permission denied)")
    if path.stat().st_size == 0:  # else the decoder's "format not recognised" hides the cause
        raise AudioError(path, "empty file (0 bytes)")
    data, rate = _decode(path)
    if data.size == 0 and (unfinished := unfinished_header(path)):
        raise AudioError(path, unfinished)
    validate_audio(data, path)
    data = mono_mix(data, path) if mono else data
    data = resample(np.ascontiguousarray(data, np.float32), rate, int(sr))
    if data.shape[0] == 0:
        raise AudioError(path, f"empty audio after resampling {rate} -> {sr} Hz")
    if level_db is not None:
        if not mono:
            raise ValueError("load_audio: level_db needs mono=True")
        return normalise_level(data, sr, level_db)
    out = data if mono else data.T
    return np.ascontiguousarray(out, np.float32)


#: dB re full scale at which the audio tasks read every input's loud passages: the median of
#: the embedded corpus's renderings.
LEVEL_DB = -20.0
LEVEL_FRAME_S = 0.1  # frames over which power is averaged before the percentile
LEVEL_PERCENTILE = 95.0  # the loud passages: robust to silences, rests and a few transients
SILENT_DB = -100.0  # below this the input is treated as silence and left as it is


def active_level_db(x: np.ndarray, sr: int) -> float:
    """The level of a mono recording's loud passages in dB re full scale: the 95th percentile of
    its 100-ms frame powers (a full-scale sine reads -3 dB). A frame's power is that of its
    variation about its own mean: a DC offset (or a drift slower than the frame) is no sound,
    and counted as one it read a quiet recording as loud. A clip shorter than a frame is one
    frame; an empty one reads -inf."""
    x = np.asarray(x, np.float64).reshape(-1)
    if len(x) == 0:
        return float("-inf")
    n = max(1, min(len(x), int(round(LEVEL_FRAME_S * sr))))
    power = np.var(x[: len(x) // n * n].reshape(-1, n), axis=1)
    level = float(np.percentile(power, LEVEL_PERCENTILE))
    return 10.0 * np.log10(level) if level > 0 else float("-inf")


def normalise_level(x: np.ndarray, sr: int, target_db: float) -> np.ndarray:
    """``x`` (mono) less its mean, scaled so that `active_level_db` reads ``target_db``, as
    float32; input quieter than -100 dB (digital silence) is returned unscaled. A DC offset
    is no sound: scaled up with the sound, it came out as notes an octave and a twelfth above
    the sound's."""
    x = np.asarray(x, np.float32)
    x = x - np.float32(np.mean(x, dtype=np.float64)) if len(x) else x.copy()
    level = active_level_db(x, sr)
    if not level > SILENT_DB:
        return x
    return (x * np.float32(10.0 ** ((target_db - level) / 20.0))).astype(np.float32)
