"""MIR-1K (1000 Chinese karaoke clips, 16 kHz stereo) -> `AudioPiece`s with a vocal f0 contour.

Layout (the official `MIR-1K.zip`, unpacked): `Wavfile/<singer>_<song>_<clip>.wav` (`Wavs/` is
accepted too) and `PitchLabel/<same stem>.pv`. The other folders (`UnvoicedFrameLabel`,
`vocal-nonvocalLabel`, `Lyrics`, `UndividedWavfile`, ...) are not read. Each wav is stereo:
left = music accompaniment, right = singing voice, given as
`channels={"accompaniment": 0, "vocals": 1}` with `audio` the mixture file.

Pitch labels: one value a line, the manually labelled vocal pitch in semitones (MIDI numbers,
possibly fractional) per frame, 0 = unvoiced. Frames follow MIR-1K's documented analysis: 40 ms
windows with a 20 ms hop, frame k (0-based) spanning [20k, 20k + 40) ms, so its centre, and the
label's time, is 0.02 * (k + 1) s: the first frame is at 20 ms. (omnizart's note labels compute
0.01 * k + 0.02, a 10 ms step that contradicts the 20 ms hop; it is not followed.) f0 is
float64 (T, 2): time_s, Hz with 440 * 2 ** ((m - 69) / 12), 0 where the label is 0. Blank lines
at the end of a file are ignored; a blank line inside it, a non-number or a negative value
raises `AnnotationError`.

Split: MIR-1K has no official split (omnizart copies the first 88% of a directory listing to
train, which depends on file-system order), so the crc32 hash split (80/10/10, `_common`) is
used, keyed by the SONG (`<singer>_<song>`), not the clip, so that the clips cut from one
recording never straddle two splits. A wav without its .pv is skipped with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import AnnotationError, AudioPiece

DATASET = "MIR-1K"
WAV_DIRS = ("Wavfile", "Wavs")
HOP_S = 0.02
CHANNELS = {"accompaniment": 0, "vocals": 1}


def read_pitch(path: Path) -> np.ndarray:
    """One .pv file -> float64 (T, 2) [time_s, Hz] at 0.02 * (k + 1) s."""
    path = Path(path)
    lines = list(C.text_lines(path))
    while lines and not lines[-1][1]:
        lines.pop()
    values = []
    for line, text in lines:
        if not text:
            raise AnnotationError(path, line, "blank line inside the frame sequence")
        fields = text.split()
        if len(fields) != 1:
            raise AnnotationError(path, line, f"expected 1 value, got {len(fields)}")
        m = C.to_float(fields[0], path, line, "pitch")
        if m < 0:
            raise AnnotationError(path, line, f"negative pitch {m}")
        values.append(m)
    if not values:
        raise AnnotationError(path, None, "no frames")
    times = HOP_S * np.arange(1, len(values) + 1)
    return np.stack([times, C.midi_to_hz(np.asarray(values))], axis=1)


def song_key(stem: str) -> str:
    """'abjones_1_01' -> 'abjones_1' (the clip number dropped); other stems unchanged."""
    head, sep, tail = stem.rpartition("_")
    return head if sep and head and tail.isdigit() else stem


def read(root: Path) -> list[AudioPiece]:
    """Every MIR-1K clip with its pitch label, sorted by name."""
    root = C.require_root(root, DATASET)
    wav_dir = next((root / d for d in WAV_DIRS if (root / d).is_dir()), None)
    pieces = []
    if wav_dir is not None:
        for wav in C.wav_files(wav_dir):
            pv = root / "PitchLabel" / f"{wav.stem}.pv"
            if not pv.is_file():
                C.warn_skip(DATASET, wav, f"no PitchLabel/{pv.name}")
                continue
            with C.skipped_if_unreadable(DATASET, pv):
                pieces.append(
                    AudioPiece(
                        name=wav.stem,
                        audio=wav,
                        split=C.hash_split(song_key(wav.stem)),
                        f0=read_pitch(pv),
                        channels=dict(CHANNELS),
                    )
                )
    if not pieces:
        raise C.no_pieces(root, DATASET, "Wavfile/*.wav with PitchLabel/*.pv")
    return pieces
