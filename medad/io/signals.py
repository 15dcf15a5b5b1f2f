"""Signal readers: EDF/BDF/FIF (MNE), WFDB (wfdb), WAV (scipy) and plain text.

* :func:`read_signal` -- one file -> :class:`~medad.io.records.SignalRecord` (float32 ``(C, T)``).
* :func:`read_header` -- what a file holds without reading its samples.
* :func:`iter_signal_chunks` -- ``(start_s, (C, n) float32)`` pieces of a long recording; EDF/BDF/FIF
  and WFDB are read piece by piece from disk, never as one float64 array.
* :func:`read_ucr` -- UCR text (label then samples per line) -> beats and labels.
* :func:`describe` -- a JSON-able summary for ``medad inspect``.

Plain text (``.txt``, ``.asc``) carries no rate and no channel names: a table is read one channel
a column (one time sample a line), a signal wrapped over lines (several values a line, the last
one shorter) as one channel; ``text_layout`` says which where the lines cannot (:func:`_text_read`).

Every failure (missing, truncated or corrupt file, unknown extension, empty signal, NaN/inf)
raises :class:`~medad.errors.ReadError` naming the file; library tracebacks and MNE's log
output never reach the user.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from medad.errors import ConfigError, ReadError
from medad.io.records import Annotation, SignalRecord

MNE_EXTENSIONS = (".edf", ".bdf", ".fif", ".fif.gz")
WFDB_EXTENSIONS = (".hea", ".dat")
WAV_EXTENSIONS = (".wav",)
TEXT_EXTENSIONS = (".txt", ".asc")  # .csv is left to tables (labels, beat lists), not signals
SIGNAL_EXTENSIONS = MNE_EXTENSIONS + WFDB_EXTENSIONS + WAV_EXTENSIONS + TEXT_EXTENSIONS
ANNOT_SUFFIXES = ("-annot.fif", "_annot.fif")  # MNE's names for annotation-only FIF files
# WFDB annotation files looked for next to a record, in order of preference
WFDB_ANNOTATORS = ("atr", "qrs", "ecg")
# block size when a whole recording is gathered from chunks (keeps the float64 copy small)
_BLOCK_SECONDS = 60.0
# library callers pass sfreq=, CLI users --text-sfreq: the message names both
TEXT_RATE_MISSING = "plain-text signal has no sampling rate: pass --text-sfreq HZ (medad CLI) or sfreq= (Python)"
#: how a plain-text file's values are laid out (:func:`_text_read`): told apart by the lines'
#: lengths (``auto``), or a table with one channel a column (``columns``), or one signal in file
#: order, several values a line (``wrapped``)
TEXT_LAYOUTS = ("auto", "columns", "wrapped")
# library callers pass text_layout=, CLI users --text-layout (the screening config: text_layout)
TEXT_LAYOUT_HOW = "--text-layout {0} (medad CLI; screening config key text_layout; Python: text_layout='{0}')"


def check_text_layout(layout: str) -> None:
    """A ConfigError unless ``layout`` is one of :data:`TEXT_LAYOUTS`."""
    if layout not in TEXT_LAYOUTS:
        raise ConfigError(f"text_layout must be one of {', '.join(TEXT_LAYOUTS)}, got {layout!r}")


@dataclass
class SignalHeader:
    """What a recording holds, read without its samples.

    Attributes:
        path: the file (for WFDB, the ``.hea`` file).
        format: ``"mne"``, ``"wfdb"``, ``"wav"`` or ``"text"``.
        sfreq: sampling rate in Hz (``None`` for plain text without a given rate).
        ch_names: channel names.
        n_times: samples per channel.
        annotations: annotations stored with the recording.
        meta: format facts (units, file type); never patient identity. WFDB: ``units``, the
            header's unit per channel (``None`` where it gives none).
        meas_date: when the recording started (UTC), where the file says (EDF/BDF/FIF measurement
            date, WFDB base date and time); kept out of ``meta`` (and so out of ``describe``), as
            dates of care identify patients.
    """

    path: Path
    format: str
    sfreq: float | None
    ch_names: list[str]
    n_times: int
    annotations: list[Annotation] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    meas_date: datetime.datetime | None = None

    @property
    def duration(self) -> float | None:
        return None if not self.sfreq else self.n_times / float(self.sfreq)


# ---------------------------------------------------------------------------- format detection
def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".fif.gz" if name.endswith(".fif.gz") else path.suffix.lower()


def signal_format(path: str | Path) -> str:
    """The reader family for ``path``: ``"mne"``, ``"wfdb"``, ``"wav"`` or ``"text"``.

    A path without extension whose ``.hea`` sibling exists is a WFDB record name.
    """
    p = Path(path)
    sfx = _suffix(p)
    if sfx in MNE_EXTENSIONS:
        return "mne"
    if sfx in WFDB_EXTENSIONS or (sfx == "" and p.with_name(p.name + ".hea").is_file()):
        return "wfdb"
    if sfx in WAV_EXTENSIONS:
        return "wav"
    if sfx in TEXT_EXTENSIONS:
        return "text"
    raise ReadError(
        f"unsupported signal file extension {sfx or '(none)'!r}; medad reads "
        f"{', '.join(SIGNAL_EXTENSIONS)} and WFDB record names", p)


def is_signal_file(path: str | Path) -> bool:
    """True for files medad can read as signals (WFDB records count once, by their ``.hea``)."""
    p = Path(path)
    if not p.is_file() or p.name.startswith("."):
        return False
    sfx = _suffix(p)
    if sfx == ".dat":  # the header names the record; .dat alone is listed through its .hea
        return False
    return sfx in SIGNAL_EXTENSIONS


def record_id_from_path(path: str | Path) -> str:
    """Record id from a file name: the name without its (double) extension."""
    p = Path(path)
    name = p.name
    for sfx in sorted(SIGNAL_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return p.stem


def subject_id_from_path(path: str | Path) -> str:
    """Subject id from a file name: the BIDS ``sub-XXX`` entity when present, else the record id."""
    rid = record_id_from_path(path)
    m = re.search(r"sub-([A-Za-z0-9]+)", rid)
    return m.group(1) if m else rid


def _check_exists(p: Path, fmt: str) -> None:
    if fmt == "wfdb":
        hea = _wfdb_base(p).with_suffix(".hea") if p.suffix else p.with_name(p.name + ".hea")
        if not hea.is_file():
            raise ReadError("WFDB header (.hea) not found", hea)
        return
    if not p.exists():
        raise ReadError("file not found", p)
    if p.is_dir():
        raise ReadError("is a folder, not a signal file", p)
    if p.stat().st_size == 0:
        raise ReadError("file is empty (0 bytes)", p)


def _wfdb_base(p: Path) -> Path:
    return p.with_suffix("") if _suffix(p) in WFDB_EXTENSIONS else p


# ---------------------------------------------------------------------------- MNE
@contextlib.contextmanager
def _quiet():
    """Silence library warnings (MNE, wfdb's pandas deprecations): medad reports problems itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _wfdb():
    with _quiet():  # wfdb builds pandas tables at import time (deprecation warnings)
        import wfdb
    return wfdb


def _check_edf_size(p: Path) -> None:
    """EDF/BDF: compare the data records the header declares with what the file holds. MNE only
    warns on a truncated file and silently reads less, which would hide a broken recording."""
    sfx = _suffix(p)
    try:
        with open(p, "rb") as f:
            head = f.read(256)
            header_bytes = int(head[184:192].decode("ascii").strip())
            n_records = int(head[236:244].decode("ascii").strip())
            n_ch = int(head[252:256].decode("ascii").strip())
            f.seek(256 + n_ch * 216)
            n_samps = [int(f.read(8).decode("ascii").strip()) for _ in range(n_ch)]
    except (ValueError, UnicodeDecodeError, OSError):
        raise ReadError(f"not a valid {sfx.lstrip('.').upper()} file (unreadable header)", p) from None
    if n_records < 0:  # -1: length unknown (recording not closed); nothing to compare
        return
    expected = header_bytes + n_records * sum(n_samps) * (3 if sfx == ".bdf" else 2)
    size = p.stat().st_size
    if size < expected:
        raise ReadError(f"file is truncated: header declares {n_records} data records "
                        f"({expected} bytes) but the file has {size} bytes", p)


def _open_mne(p: Path):
    import mne

    sfx = _suffix(p)
    if sfx in (".edf", ".bdf"):
        _check_edf_size(p)
    fn = {".edf": mne.io.read_raw_edf, ".bdf": mne.io.read_raw_bdf}.get(sfx, mne.io.read_raw_fif)
    try:
        with _quiet():
            raw = fn(str(p), preload=False, verbose="error")
    except Exception as e:  # MNE raises many types (ValueError, RuntimeError, OSError...) on bad files
        raise ReadError(f"cannot read as {sfx.lstrip('.').upper()}: {_short(e)}", p) from None
    return raw


def _mne_annotations(raw) -> list[Annotation]:
    out = []
    for a in raw.annotations:
        chs = a.get("ch_names") or ()
        out.append(Annotation(float(a["onset"]), float(a["duration"]), str(a["description"]),
                              ",".join(chs) if chs else None))
    return out


def _mne_header(p: Path) -> tuple[SignalHeader, Any]:
    raw = _open_mne(p)
    meta = {"file_type": _suffix(p).lstrip(".").upper(), "unit": "V (MNE SI units)",
            "channel_types": sorted(set(raw.get_channel_types()))}
    hdr = SignalHeader(p, "mne", float(raw.info["sfreq"]), list(raw.ch_names), int(raw.n_times),
                       _mne_annotations(raw), meta, raw.info["meas_date"])
    return hdr, raw


# ---------------------------------------------------------------------------- WFDB
def _wfdb_header(p: Path) -> SignalHeader:
    wfdb = _wfdb()

    base = _wfdb_base(p)
    try:
        with _quiet():
            h = wfdb.rdheader(str(base))
    except Exception as e:  # wfdb raises assorted errors on malformed headers
        raise ReadError(f"cannot read WFDB header: {_short(e)}", base.with_suffix(".hea")) from None
    if not h.sig_name or not h.sig_len:
        raise ReadError("WFDB record has no signal (no channels or zero length)", base.with_suffix(".hea"))
    _check_wfdb_files(base, h)
    anns, annotator = _wfdb_annotations(base, float(h.fs))
    units = [u or None for u in (h.units or [None] * len(h.sig_name))]
    meta = {"file_type": "WFDB", "unit": ",".join(u or "?" for u in units), "units": units, "annotator": annotator}
    date = None
    if h.base_date is not None:  # a base time without a date places the recording on no day
        date = datetime.datetime.combine(h.base_date, h.base_time or datetime.time(0), tzinfo=datetime.timezone.utc)
    return SignalHeader(base.with_suffix(".hea"), "wfdb", float(h.fs), list(h.sig_name), int(h.sig_len), anns, meta,
                        date)


# bytes per sample of the WFDB storage formats (compressed FLAC formats are not checked)
_WFDB_BYTES = {"8": 1.0, "16": 2.0, "61": 2.0, "80": 1.0, "160": 2.0, "212": 1.5, "310": 4 / 3, "311": 4 / 3,
               "24": 3.0, "32": 4.0}


def _check_wfdb_files(base: Path, h) -> None:
    """The signal files a WFDB header names exist and hold every sample it declares: a missing or
    truncated ``.dat`` is reported at the header, not as an obscure error while reading samples."""
    need: dict[str, float] = {}
    for i, name in enumerate(h.file_name or []):
        fmt = str((h.fmt or [None] * (i + 1))[i])
        spf = (h.samps_per_frame or [1] * (i + 1))[i] or 1
        if name is None or fmt not in _WFDB_BYTES:
            continue
        off = (h.byte_offset or [None] * (i + 1))[i] or 0
        need[name] = need.get(name, off) + h.sig_len * spf * _WFDB_BYTES[fmt]
    for name, n in need.items():
        f = base.with_name(name)
        if not f.is_file():
            raise ReadError(f"WFDB signal file {name} named in the header is missing", base.with_suffix(".hea"))
        size = f.stat().st_size
        if size < int(n):
            raise ReadError(f"WFDB signal file is truncated: the header declares {h.sig_len} samples per signal "
                            f"({int(n)} bytes) but the file has {size} bytes", f)


def _wfdb_annotations(base: Path, fs: float) -> tuple[list[Annotation], str | None]:
    wfdb = _wfdb()

    for ext in WFDB_ANNOTATORS:
        f = base.with_name(base.name + "." + ext)
        if not f.is_file():
            continue
        try:
            with _quiet():
                a = wfdb.rdann(str(base), ext)
        except Exception as e:
            raise ReadError(f"cannot read WFDB annotations: {_short(e)}", f) from None
        notes = a.aux_note or [""] * len(a.sample)
        out = []
        for s, sym, note in zip(a.sample, a.symbol, notes):
            note = (note or "").strip("\x00").strip()
            out.append(Annotation(float(s) / fs, 0.0, f"{sym} {note}".strip() if note else str(sym)))
        return out, ext
    return [], None


def _wfdb_read(hdr: SignalHeader, start: int, stop: int, picks: list[int]) -> np.ndarray:
    wfdb = _wfdb()

    base = _wfdb_base(hdr.path)
    try:
        with _quiet():
            rec = wfdb.rdrecord(str(base), sampfrom=start, sampto=stop, channels=picks)
    except Exception as e:
        raise ReadError(f"cannot read WFDB samples: {_short(e)}", base.with_suffix(".dat")) from None
    if rec.p_signal is None:
        raise ReadError("WFDB record holds no physical signal", hdr.path)
    return rec.p_signal.T.astype(np.float32)


# ---------------------------------------------------------------------------- WAV
def _check_wav_size(p: Path) -> None:
    """RIFF/WAVE: every chunk up to and including ``data`` lies inside the file. scipy reports a
    cut-short file only as "mmap length is greater than file size" (or reads fewer samples
    without a word, without mmap), which hides that the recording is incomplete."""
    import struct

    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return  # not plain RIFF/WAVE (RIFX, RF64, junk): scipy says what it is
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, n = struct.unpack("<4sI", f.read(8))
                if cid == b"data" and n == 0xFFFFFFFF:  # length unknown (a stream): nothing to compare
                    return
                if pos + 8 + n > size:
                    what = "audio samples" if cid == b"data" else f"its {cid.decode('latin-1').strip()!r} chunk"
                    raise ReadError(f"WAV file is truncated (incomplete): the header declares {n} bytes of {what} "
                                    f"but the file holds only {max(size - pos - 8, 0)} of them; copy or export it "
                                    f"again", p)
                if cid == b"data":
                    return
                pos += 8 + n + (n & 1)  # chunks are padded to an even length
    except OSError as e:
        raise ReadError(f"cannot read: {e.strerror}", p) from None


def _wav_read(p: Path, mmap: bool = True) -> tuple[int, np.ndarray]:
    from scipy.io import wavfile

    _check_wav_size(p)
    try:
        with _quiet():  # WavFileWarning on odd chunks
            fs, x = wavfile.read(str(p), mmap=mmap)
    except Exception as e:
        raise ReadError(f"cannot read as WAV: {_short(e)}", p) from None
    return int(fs), x


def _wav_to_float(x: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1]; float stays float."""
    if x.dtype == np.uint8:
        y = (x.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(x.dtype, np.integer):
        y = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    else:
        y = x.astype(np.float32)
    return y.reshape(len(y), -1).T  # (T,) or (T, C) -> (C, T)


def _wav_header(p: Path) -> SignalHeader:
    fs, x = _wav_read(p)
    n_ch = 1 if x.ndim == 1 else x.shape[1]
    names = ["audio"] if n_ch == 1 else [f"audio{i}" for i in range(n_ch)]
    return SignalHeader(p, "wav", float(fs), names, int(x.shape[0]), [], {"file_type": "WAV", "dtype": str(x.dtype)})


# ---------------------------------------------------------------------------- text
def _text_read(p: Path, layout: str = "auto") -> tuple[np.ndarray, str]:
    """The numbers of a whitespace/comma separated text file as ``(C, T)`` float32 and the layout
    read (:data:`TEXT_LAYOUTS`): ``"columns"`` -- a table, one time sample a line and one channel a
    column (one value a line, as Bonn: one channel) -- or ``"wrapped"`` -- ONE signal, its values
    in file order, several a line (Wang-Chung: 5 a line, the last line shorter).

    ``layout="auto"`` tells them apart by the number of values a line: the same on every line
    (more lines than values a line) is a table; the same on every line but a shorter last one is
    a wrapped signal, and so is a single line. A file that fits neither (lines of different
    lengths, or no more lines than values a line) is a ReadError saying how to choose
    (``text_layout``). A wrapped signal whose every line is full cannot be told from a table:
    it reads as one; ``layout="wrapped"`` reads it as one signal."""
    check_text_layout(layout)
    try:
        txt = p.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ReadError("not a text file (binary content)", p) from None
    except OSError as e:
        raise ReadError(f"cannot read: {e.strerror}", p) from None
    txt = txt.replace(",", " ")  # comma- or whitespace-separated
    tokens = txt.split()
    try:
        x = np.asarray(tokens, dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise ReadError(f"plain-text signal holds a non-numeric value {bad[:20]!r}", p) from None
    del tokens
    counts = np.array([len(line.split()) for line in txt.splitlines()], dtype=np.int64)
    lines = np.flatnonzero(counts) + 1  # line numbers (1-based) of the lines holding values
    counts = counts[counts > 0]
    width = int(counts[0]) if len(counts) else 1
    regular = bool((counts == width).all())
    if width == 1 and regular:  # one value a line: one channel, whatever the layout
        return x.astype(np.float32)[None, :], "columns"
    if layout == "wrapped":
        return x.astype(np.float32)[None, :], "wrapped"
    if not regular:
        j = int(np.flatnonzero(counts != width)[0])
        where = (f"line {lines[0]} holds {width} values, line {lines[j]} {counts[j]}")
        if layout == "columns":
            raise ReadError(f"plain-text signal is not a table (text_layout: columns): {where}; a table has the "
                            f"same number of values (one a channel) on every line", p)
        if j == len(counts) - 1 and counts[j] < width:  # full lines, a shorter last one: one wrapped signal
            return x.astype(np.float32)[None, :], "wrapped"
        raise ReadError(f"plain-text signal has lines of different lengths ({where}): neither a table (one channel a "
                        f"column, one time sample a line) nor one signal wrapped at a fixed number of values a line. "
                        f"To read all its values in file order as one signal: {TEXT_LAYOUT_HOW.format('wrapped')}", p)
    if layout == "auto":
        if len(counts) == 1:  # one line of values: one signal written on one line
            return x.astype(np.float32)[None, :], "wrapped"
        if len(counts) <= width:
            raise ReadError(f"plain-text signal of {len(counts)} lines of {width} values each is ambiguous (no more "
                            f"lines than values a line): {width} channels, one a column and one time sample a line, "
                            f"or one signal wrapped {width} values a line? Say which: "
                            f"{TEXT_LAYOUT_HOW.format('columns|wrapped')}. A file with one channel a line must be "
                            f"transposed first", p)
    return np.ascontiguousarray(x.reshape(len(counts), width).T.astype(np.float32)), "columns"


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def text_channel_names(p: Path, n: int) -> list[str]:
    """Channel names of a plain-text recording (the file has none): one channel is named after
    the file (its record id), the columns of a table ``col1``, ``col2``, ..."""
    return [record_id_from_path(p)] if n == 1 else [f"col{k + 1}" for k in range(n)]


def _text_header(p: Path, sfreq: float | None, layout: str = "auto") -> tuple[SignalHeader, np.ndarray]:
    x, read_as = _text_read(p, layout)
    return SignalHeader(p, "text", sfreq, text_channel_names(p, x.shape[0]), int(x.shape[1]), [],
                        {"file_type": "text", "sfreq_given": sfreq is not None, "layout": read_as}), x


# ---------------------------------------------------------------------------- public API
def read_header(path: str | Path, *, sfreq: float | None = None, text_layout: str = "auto") -> SignalHeader:
    """Sampling rate, channels, length and annotations of a recording, without its samples
    (plain text is parsed, having no header; ``text_layout``: how its values are laid out,
    :data:`TEXT_LAYOUTS`)."""
    p = Path(path)
    fmt = signal_format(p)
    _check_exists(p, fmt)
    if fmt == "mne":
        return _mne_header(p)[0]
    if fmt == "wfdb":
        return _wfdb_header(p)
    if fmt == "wav":
        return _wav_header(p)
    return _text_header(p, sfreq, text_layout)[0]


def _pick_indices(hdr: SignalHeader, channels: Sequence[str | int] | None) -> list[int]:
    if channels is None:
        return list(range(len(hdr.ch_names)))
    idx = []
    for c in channels:
        if isinstance(c, (int, np.integer)):
            if not 0 <= int(c) < len(hdr.ch_names):
                raise ReadError(f"channel index {c} out of range (recording has {len(hdr.ch_names)})", hdr.path)
            idx.append(int(c))
        elif c in hdr.ch_names:
            idx.append(hdr.ch_names.index(c))
        else:
            raise ReadError(f"channel {c!r} not found; channels are: {', '.join(hdr.ch_names)}", hdr.path)
    if not idx:
        raise ReadError("no channels selected", hdr.path)
    return idx


def _check_finite(x: np.ndarray, p: Path, start_s: float = 0.0, sfreq: float | None = None) -> None:
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        where = f" at {start_s + bad[1] / sfreq:.2f} s" if sfreq else ""
        raise ReadError(f"signal contains NaN or infinite values (channel {bad[0]}{where})", p)


def iter_signal_chunks(path: str | Path, chunk_seconds: float, overlap_seconds: float = 0.0,
                       picks: Sequence[str | int] | None = None, *, sfreq: float | None = None,
                       header: SignalHeader | None = None, start_seconds: float = 0.0,
                       stop_seconds: float | None = None, text_layout: str = "auto") -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(start_seconds, data (C, n) float32)`` pieces of a recording.

    Consecutive chunks start ``chunk_seconds - overlap_seconds`` apart; the last one may be
    shorter. EDF/BDF/FIF are read with ``preload=False`` and WFDB with ``sampfrom/sampto``, so only
    one chunk is ever in memory (as float64 only for that chunk). WAV is memory-mapped.

    Args:
        path: the recording.
        chunk_seconds: length of each chunk.
        overlap_seconds: overlap between consecutive chunks (``< chunk_seconds``).
        picks: channel names or indices (default all).
        sfreq: sampling rate for plain text (which has none of its own).
        header: a header already read with :func:`read_header` (saves re-reading it; plain text is
            read in the layout that header found).
        start_seconds / stop_seconds: read only this span of the recording.
        text_layout: plain text without ``header``: how its values are laid out (:data:`TEXT_LAYOUTS`).
    """
    p = Path(path)
    if chunk_seconds <= 0 or not 0 <= overlap_seconds < chunk_seconds:
        raise ValueError(f"need chunk_seconds > 0 and 0 <= overlap_seconds < chunk_seconds, "
                         f"got {chunk_seconds}, {overlap_seconds}")
    fmt = signal_format(p)
    _check_exists(p, fmt)
    raw = None
    whole = None
    if header is not None:
        hdr = header
        if fmt == "mne":
            raw = _open_mne(p)
    elif fmt == "mne":
        hdr, raw = _mne_header(p)
    elif fmt == "text":
        hdr, whole = _text_header(p, sfreq, text_layout)
    else:
        hdr = read_header(p)
    if fmt == "text" and whole is None:
        whole = _text_read(p, hdr.meta.get("layout", text_layout))[0]
    if hdr.sfreq is None:
        raise ReadError(TEXT_RATE_MISSING, p)
    if hdr.n_times == 0:
        raise ReadError("signal is empty (0 samples)", p)
    idx = _pick_indices(hdr, picks)
    fs = float(hdr.sfreq)
    n_chunk = max(1, int(round(chunk_seconds * fs)))
    step = max(1, n_chunk - int(round(overlap_seconds * fs)))
    wav = _wav_read(p)[1] if fmt == "wav" else None
    start = max(0, int(round(start_seconds * fs)))
    end = hdr.n_times if stop_seconds is None else min(hdr.n_times, int(round(stop_seconds * fs)))
    while start < end:
        stop = min(start + n_chunk, end)
        if fmt == "mne":
            try:
                x = raw.get_data(picks=idx, start=start, stop=stop).astype(np.float32)
            except Exception as e:  # a file truncated after its header fails here
                raise ReadError(f"cannot read samples {start}-{stop}: {_short(e)} (truncated or corrupt?)", p) from None
        elif fmt == "wfdb":
            x = _wfdb_read(hdr, start, stop, idx)
        elif fmt == "wav":
            x = _wav_to_float(np.asarray(wav[start:stop]))[idx]
        else:
            x = whole[idx, start:stop]
        _check_finite(x, p, start / fs, fs)
        yield start / fs, x
        if stop >= end:
            break
        start += step


def read_signal(path: str | Path, *, channels: Sequence[str | int] | None = None, sfreq: float | None = None,
                record_id: str | None = None, subject_id: str | None = None,
                label: str | int | None = None, text_layout: str = "auto") -> SignalRecord:
    """Read a whole recording into a :class:`SignalRecord` (``(C, T)`` float32).

    Args:
        path: EDF/BDF/FIF, a WFDB record (``.hea``/``.dat`` or the bare record name), WAV or text.
        channels: channel names or indices to keep (default all).
        sfreq: for plain text, its sampling rate (required); for other formats, a rate to
            resample to (polyphase) when it differs from the file's own.
        record_id: defaults to the file name without extension.
        subject_id: defaults to the BIDS ``sub-`` entity of the name, else the record id.
        label: recording-level label (from a dataset adapter).
        text_layout: for plain text, how its values are laid out (:data:`TEXT_LAYOUTS`): ``auto``
            (a table: one channel a column; a signal wrapped over lines: one channel), ``columns``
            or ``wrapped``.
    """
    p = Path(path)
    fmt = signal_format(p)
    _check_exists(p, fmt)
    if fmt == "text":
        hdr, whole = _text_header(p, sfreq, text_layout)
        if sfreq is None:
            raise ReadError(TEXT_RATE_MISSING, p)
        data = whole[_pick_indices(hdr, channels)]
        _check_finite(data, p, 0.0, sfreq)
    else:
        hdr = read_header(p)
        idx = _pick_indices(hdr, channels)
        data = np.empty((len(idx), hdr.n_times), dtype=np.float32)
        # gathered block by block so a long EDF never exists as one float64 array
        for start_s, x in iter_signal_chunks(p, _BLOCK_SECONDS, picks=idx, header=hdr):
            i0 = int(round(start_s * hdr.sfreq))
            data[:, i0:i0 + x.shape[1]] = x
    if data.size == 0:
        raise ReadError("signal is empty (0 samples)", p)
    fs = float(hdr.sfreq if fmt != "text" else sfreq)
    meta = dict(hdr.meta, format=fmt)
    if sfreq is not None and fmt != "text" and abs(float(sfreq) - fs) > 1e-6:
        from medad.transforms.signal import resample

        data = resample(data, fs, float(sfreq))
        meta["original_sfreq"] = fs
        fs = float(sfreq)
    rid = record_id or record_id_from_path(p if fmt != "wfdb" else _wfdb_base(p))
    return SignalRecord(
        data=data, sfreq=fs, ch_names=[hdr.ch_names[i] for i in _pick_indices(hdr, channels)],
        annotations=list(hdr.annotations), record_id=rid,
        subject_id=subject_id or (subject_id_from_path(p) if record_id is None else record_id),
        label=label, path=p, meta=meta,
    )


def read_ucr(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a UCR text file (one series per line: class label, then samples).

    Returns:
        ``(series (N, T) float32, labels (N,) int)``.
    """
    p = Path(path)
    _check_exists(p, "text")
    rows = []
    lineno = 0
    try:
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                rows.append(np.asarray(line.replace(",", " ").split(), dtype=np.float64))
    except (UnicodeDecodeError, ValueError) as e:
        raise ReadError(f"not a UCR text file (line {lineno}: {_short(e)})", p) from None
    if not rows:
        raise ReadError("UCR file holds no series", p)
    lens = {len(r) for r in rows}
    if len(lens) != 1 or min(lens) < 2:
        raise ReadError(f"UCR rows differ in length ({sorted(lens)[:5]}); expected label + equal-length series", p)
    arr = np.stack(rows)
    labels = arr[:, 0]
    if not np.allclose(labels, np.round(labels)):
        raise ReadError("first column of a UCR file must be integer class labels", p)
    x = arr[:, 1:].astype(np.float32)
    _check_finite(x, p)
    return x, np.round(labels).astype(int)


def describe(path: str | Path, *, sfreq: float | None = None, text_layout: str = "auto") -> dict[str, Any]:
    """A JSON-able summary of a recording for ``medad inspect``: format, sampling rate, channels,
    duration and the annotations/labels found (plain text: read in ``text_layout``)."""
    p = Path(path)
    hdr = read_header(p, sfreq=sfreq, text_layout=text_layout)
    counts: dict[str, int] = {}
    for a in hdr.annotations:
        counts[a.description] = counts.get(a.description, 0) + 1
    return {
        "path": str(p),
        "kind": "signal",
        "format": hdr.meta.get("file_type", hdr.format),
        "record_id": record_id_from_path(_wfdb_base(p) if hdr.format == "wfdb" else p),
        "sfreq": hdr.sfreq,
        "n_channels": len(hdr.ch_names),
        "channels": hdr.ch_names,
        "n_times": hdr.n_times,
        "duration_s": hdr.duration,
        "n_annotations": len(hdr.annotations),
        "annotations": counts,
        "first_annotations": [vars(a) for a in hdr.annotations[:5]],
        "meta": hdr.meta,
        **({} if hdr.sfreq else {"note": TEXT_RATE_MISSING}),
    }


def _short(e: BaseException, n: int = 200) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:n]
