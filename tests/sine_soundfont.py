"""A minimal SoundFont 2 file written from the spec's chunks: one looped sine sample, one
instrument over the whole keyboard, and that instrument as every General MIDI preset of bank 0.

A rendering with it has no harmonics at all, unlike any sampled instrument, so a test can tell
which soundfont played a piece. Chunk layout (SoundFont 2.01 spec): RIFF 'sfbk' holding LIST
'INFO' (ifil, isng, INAM), LIST 'sdta' (smpl: 16-bit mono samples, 46 zeros after each sample)
and LIST 'pdta' (phdr, pbag, pmod, pgen, inst, ibag, imod, igen, shdr, each ending with a
terminal record).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44_000  # 100 samples per period at 440 Hz: the loop is exact
ROOT_KEY = 69  # the sample is A4
PERIOD = 100
LOOP_START, LOOP_END = 10 * PERIOD, 110 * PERIOD

GEN_KEY_RANGE, GEN_INSTRUMENT, GEN_SAMPLE_ID, GEN_SAMPLE_MODES = 43, 41, 53, 54
GEN_RELEASE_VOL_ENV = 38


def _chunk(tag: bytes, data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return tag + struct.pack("<I", len(data)) + data + pad


def _list(kind: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", kind + b"".join(chunks))


def _name(text: str) -> bytes:
    return text.encode("ascii")[:19].ljust(20, b"\0")


def write_sine_soundfont(path: Path, presets: range = range(128)) -> Path:
    """Write the sine soundfont to `path` (every preset of bank 0 in `presets` plays it)."""
    t = np.arange(LOOP_END)
    wave = np.round(0.5 * 32767 * np.sin(2 * np.pi * t / PERIOD)).astype("<i2")
    smpl = wave.tobytes() + bytes(2 * 46)

    phdr = b"".join(
        _name(f"sine {p}") + struct.pack("<HHHIII", p, 0, i, 0, 0, 0) for i, p in enumerate(presets)
    )
    phdr += _name("EOP") + struct.pack("<HHHIII", 0, 0, len(presets), 0, 0, 0)
    pbag = b"".join(struct.pack("<HH", i, 0) for i in range(len(presets) + 1))
    pmod = bytes(10)
    pgen = b"".join(struct.pack("<HH", GEN_INSTRUMENT, 0) for _ in presets)
    pgen += bytes(4)
    inst = _name("sine") + struct.pack("<H", 0) + _name("EOI") + struct.pack("<H", 1)
    ibag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 4, 0)
    imod = bytes(10)
    igen = struct.pack("<HBB", GEN_KEY_RANGE, 0, 127)
    igen += struct.pack("<Hh", GEN_RELEASE_VOL_ENV, -7973)  # about 10 ms: ends with the note
    igen += struct.pack("<HH", GEN_SAMPLE_MODES, 1)  # loop while the key is held
    igen += struct.pack("<HH", GEN_SAMPLE_ID, 0)  # must be the zone's last generator
    igen += bytes(4)
    shdr = _name("sine") + struct.pack(
        "<IIIIIBbHH", 0, LOOP_END, LOOP_START, LOOP_END, SAMPLE_RATE, ROOT_KEY, 0, 0, 1
    )
    shdr += _name("EOS") + bytes(26)

    body = b"sfbk" + _list(
        b"INFO",
        _chunk(b"ifil", struct.pack("<HH", 2, 1)),
        _chunk(b"isng", b"EMU8000\0"),
        _chunk(b"INAM", b"jaxmir test sine\0\0"),
    )
    body += _list(b"sdta", _chunk(b"smpl", smpl))
    body += _list(
        b"pdta",
        _chunk(b"phdr", phdr),
        _chunk(b"pbag", pbag),
        _chunk(b"pmod", pmod),
        _chunk(b"pgen", pgen),
        _chunk(b"inst", inst),
        _chunk(b"ibag", ibag),
        _chunk(b"imod", imod),
        _chunk(b"igen", igen),
        _chunk(b"shdr", shdr),
    )
    path = Path(path)
    path.write_bytes(_chunk(b"RIFF", body))
    return path
