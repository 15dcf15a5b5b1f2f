"""Dataset adapters for public signal layouts (see ``../shared/data/README.md``).

Recording-level kinds return ``list[SignalRecord]`` (each with ``record_id``, ``subject_id``,
``label`` = the dataset's class name, and ``meta["abnormal"]`` = 0/1):

* ``bonn`` -- Bonn EEG sets ``A_Z .. E_S``, one single-channel text segment per file, 173.61 Hz.
* ``heart_sounds`` -- class-per-folder WAV heart sounds (Yaseen: ``N`` normal; ``MR``, ``MS``,
  ``MVP``, ``AS`` abnormal).
* ``physionet2016`` -- PhysioNet/CinC 2016 layout: WAV files + ``REFERENCE*.csv`` (-1 normal, 1 abnormal).

Beat-level kinds return a :class:`SignalSet` (equal-length arrays):

* ``wfdb_beats`` -- WFDB records with ``<rec>_all_beats.csv`` / ``<rec>_pvc_beats.csv`` (MIT-BIH
  subset): a window around every R peak + RR-interval features; record id = subject id.
* ``ucr`` -- UCR text files (``ECG200``, ``ECG5000``): label then samples per line.

Loaders take the dataset folder (``None``: the kind's folder under the data root, see
:data:`medad.datasets.KINDS`). Bonn, Yaseen and UCR have no subject ids: each recording is its own subject, so splits over
them are by recording (optimistic: two segments of one person may land in different splits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medad.errors import InputError, ReadError
from medad.io.records import SignalRecord
from medad.io.signals import read_signal, read_ucr, record_id_from_path

BONN_SFREQ = 173.61
BONN_SETS = {"A": "A_Z", "B": "B_O", "C": "C_N", "D": "D_F", "E": "E_S"}
BONN_GROUP = {"A": "healthy", "B": "healthy", "C": "interictal", "D": "interictal", "E": "ictal"}
# recording site / electrode type (Andrzejak et al. 2001): A, B surface EEG of volunteers; C, D, E
# intracranial EEG of epilepsy patients
BONN_SITE = {"A": "surface", "B": "surface", "C": "intracranial", "D": "intracranial", "E": "intracranial"}
HEART_SOUND_NORMAL = ("N", "normal", "Normal")



@dataclass
class SignalSet:
    """Equal-length signal items as arrays.

    Attributes:
        x: ``(N, C, T)`` float32.
        y: ``(N,)`` int, 1 = abnormal.
        classes: ``(N,)`` the dataset's own class of each item (e.g. ``"V"``/``"N"``, UCR label).
        record_ids: ``(N,)`` str, the recording each item comes from.
        subject_ids: ``(N,)`` str, the person (split on these).
        sfreq: sampling rate of ``x`` (``None`` when unknown, e.g. UCR).
        features: extra per-item arrays by name (e.g. ``"rr"`` ``(N, 3)`` RR-interval features).
        meta: dataset facts.
    """

    x: np.ndarray
    y: np.ndarray
    classes: np.ndarray
    record_ids: np.ndarray
    subject_ids: np.ndarray
    sfreq: float | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.x))

    def subset(self, idx) -> "SignalSet":
        """Items ``idx`` (indices or a boolean mask) as a new set."""
        return SignalSet(self.x[idx], self.y[idx], self.classes[idx], self.record_ids[idx], self.subject_ids[idx],
                         self.sfreq, {k: v[idx] for k, v in self.features.items()}, dict(self.meta))

    @classmethod
    def from_records(cls, records: Sequence[SignalRecord], *, length: int | None = None) -> "SignalSet":
        """Stack recordings into a set; with ``length`` each is cropped (first samples) or zero-padded."""
        if not records:
            raise InputError("no records to stack")
        sf = {r.sfreq for r in records}
        if len(sf) != 1:
            raise InputError(f"records have different sampling rates {sorted(sf)}: resample first")
        n = length or records[0].n_times
        if length is None and any(r.n_times != n for r in records):
            raise InputError("records differ in length: pass length= to crop/pad, or cut windows")
        x = np.zeros((len(records), records[0].n_channels, n), np.float32)
        for i, r in enumerate(records):
            k = min(n, r.n_times)
            x[i, :, :k] = r.data[:, :k]
        return cls(x=x, y=np.array([int(r.meta.get("abnormal", 0)) for r in records]),
                   classes=np.array([str(r.label) for r in records]),
                   record_ids=np.array([str(r.record_id) for r in records]),
                   subject_ids=np.array([str(r.subject_id) for r in records]), sfreq=float(sf.pop()))

    def counts(self) -> dict[str, int]:
        """Items per class."""
        return _count(self.classes)


def _root(root: str | Path | None, kind: str) -> Path:
    """The dataset folder: ``root``, or the kind's default folder under the data root."""
    if root is None:
        from medad.datasets import dataset_root

        return dataset_root(kind)
    root = Path(root)
    if not root.is_dir():
        raise ReadError(f"{kind} dataset folder not found", root)
    return root


# ---------------------------------------------------------------------------- recording kinds
def load_bonn(root: str | Path | None = None, *, sets: Sequence[str] = ("A", "B", "C", "D", "E")) -> list[SignalRecord]:
    """Bonn EEG: 100 single-channel 23.6 s segments per set (``A_Z`` .. ``E_S``) at 173.61 Hz.

    ``label`` is the set letter; ``meta["group"]`` healthy / interictal / ictal;
    ``meta["abnormal"]`` is 1 for the seizure set E only.
    """
    root = _root(root, "bonn")
    out: list[SignalRecord] = []
    for s in sets:
        s = s.upper()[:1]
        if s not in BONN_SETS:
            raise InputError(f"unknown Bonn set {s!r}; sets are {', '.join(BONN_SETS)}")
        folder = next((d for d in (root / BONN_SETS[s], root / s) if d.is_dir()), None)
        if folder is None:
            raise ReadError(f"Bonn set folder {BONN_SETS[s]} not found", root)
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".txt")
        if not files:
            raise ReadError("Bonn set folder holds no .txt segments", folder)
        for f in files:
            rec = read_signal(f, sfreq=BONN_SFREQ, label=s)
            rec.ch_names = ["EEG"]
            rec.meta.update(set=BONN_SETS[s], group=BONN_GROUP[s], abnormal=int(s == "E"))
            out.append(rec)
    return out


WANG_CHUNG_CHANNELS = ("c3", "c4", "cz", "p3", "p4", "t3", "t4", "t5")
WANG_CHUNG_SFREQ = 100.0


def load_wang_chung(root: str | Path | None = None) -> SignalRecord:
    """One epilepsy patient's scalp EEG (Wang, Ombao & Chung 2018): 8 channels at 100 Hz, one
    whitespace-separated text file per channel; the first half precedes the seizure, the second
    half is the seizure (one ``seizure`` annotation from the midpoint to the end)."""
    from medad.io.records import Annotation

    root = _root(root, "wang_chung")
    # several samples a line of ONE signal, row by row: said, not guessed (a file whose last line is full would
    # otherwise look like a table of columns)
    chans = [read_signal(root / f"{c}.txt", sfreq=WANG_CHUNG_SFREQ, text_layout="wrapped").data[0]
             for c in WANG_CHUNG_CHANNELS]
    n = {len(v) for v in chans}
    if len(n) != 1:
        raise ReadError(f"channel files differ in length ({sorted(n)} samples)", root)
    t = len(chans[0]) / WANG_CHUNG_SFREQ
    return SignalRecord(np.stack(chans), WANG_CHUNG_SFREQ, [c.upper() for c in WANG_CHUNG_CHANNELS],
                        [Annotation(t / 2, t / 2, "seizure")], record_id="wang_chung", subject_id="wang_chung",
                        path=root, meta={"abnormal": 1})


def load_heart_sounds(root: str | Path | None = None, *, normal: Sequence[str] = HEART_SOUND_NORMAL) -> list[SignalRecord]:
    """Class-per-folder heart sounds (Yaseen): ``label`` = folder name, abnormal unless it is in ``normal``."""
    root = _root(root, "heart_sounds")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ReadError("no class folders found", root)
    out = []
    for d in classes:
        for f in sorted(d.glob("*.wav")) + sorted(d.glob("*.WAV")):
            rec = read_signal(f, label=d.name)
            rec.meta["abnormal"] = int(d.name not in normal)
            out.append(rec)
    if not out:
        raise ReadError("class folders hold no .wav files", root)
    return out


def read_physionet_reference(root: Path) -> dict[str, int]:
    """Record -> label (-1 normal, 1 abnormal) from every ``REFERENCE*.csv`` in ``root``."""
    import csv

    ref: dict[str, int] = {}
    files = sorted(root.glob("REFERENCE*.csv"))
    if not files:
        raise ReadError("no REFERENCE*.csv label file found (PhysioNet 2016 layout)", root)
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if len(row) < 2 or not row[1].strip().lstrip("-").isdigit():
                    continue  # header line
                ref[row[0].strip()] = int(row[1])
    return ref


def load_physionet2016(root: str | Path | None = None) -> list[SignalRecord]:
    """PhysioNet/CinC 2016: ``<rec>.wav`` + REFERENCE csv; ``label`` -1 normal / 1 abnormal.

    WAV files without a reference row are skipped (they are unlabeled).
    """
    root = _root(root, "physionet2016")
    ref = read_physionet_reference(root)
    out = []
    for f in sorted(root.rglob("*.wav")):
        rid = record_id_from_path(f)
        if rid not in ref:
            continue
        rec = read_signal(f, label=ref[rid])
        rec.meta["abnormal"] = int(ref[rid] == 1)
        out.append(rec)
    if not out:
        raise ReadError("no labelled .wav recordings found", root)
    return out


# ---------------------------------------------------------------------------- beat kinds
def read_beat_csv(f: Path) -> np.ndarray:
    """Sample indices from a beat CSV (``,R`` / ``,PVC`` columns: index then sample)."""
    try:
        rows = [ln.split(",") for ln in f.read_text(encoding="utf-8").splitlines()[1:] if ln.strip()]
        return np.array([int(float(r[-1])) for r in rows], dtype=np.int64)
    except (ValueError, IndexError, OSError) as e:
        raise ReadError(f"cannot read beat list: {e}", f) from None


def rr_features(peaks: np.ndarray, sfreq: float, local: int = 10) -> np.ndarray:
    """Per beat: previous RR, next RR (s) and previous RR / local mean RR (rate-normalised
    prematurity; amplitude-free). Edges repeat their neighbour."""
    rr = np.diff(peaks) / float(sfreq)
    if len(rr) == 0:
        return np.zeros((len(peaks), 3), np.float32)
    pre = np.concatenate([[rr[0]], rr])
    post = np.concatenate([rr, [rr[-1]]])
    k = np.ones(local) / local
    mean = np.convolve(np.pad(pre, (local // 2, local - 1 - local // 2), mode="edge"), k, mode="valid")
    return np.stack([pre, post, pre / np.maximum(mean, 1e-6)], axis=1).astype(np.float32)


def load_wfdb_beats(root: str | Path | None = None, *, before: float = 0.25, after: float = 0.4,
                    records: Sequence[str] | None = None, channel: str | int = 0) -> SignalSet:
    """Beats of WFDB records with ``<rec>_all_beats.csv`` (R peaks) and ``<rec>_pvc_beats.csv``.

    Args:
        root: folder of records (MIT-BIH subset).
        before / after: seconds kept before / after each R peak.
        records: record names to load (default all with a beat list).
        channel: channel name or index (MIT-BIH subset: MLII only).

    Returns:
        :class:`SignalSet` with ``x (N, 1, T)``, ``y`` 1 for PVC beats, ``classes`` ``"V"``/``"N"``
        (N = any non-PVC beat, paced included), ``features["rr"]`` (see :func:`rr_features`),
        ``features["peak"]`` (sample of the R peak); subject id = record id.
    """
    root = _root(root, "wfdb_beats")
    names = sorted(f.name[: -len("_all_beats.csv")] for f in root.glob("*_all_beats.csv"))
    if records is not None:
        missing = set(map(str, records)) - set(names)
        if missing:
            raise ReadError(f"no beat list for records {sorted(missing)}", root)
        names = [n for n in names if n in set(map(str, records))]
    if not names:
        raise ReadError("no *_all_beats.csv beat lists found", root)
    xs, ys, rids, rrs, peaks_all = [], [], [], [], []
    sfreq = None
    for name in names:
        rec = read_signal(root / name, channels=[channel])
        if sfreq is None:
            sfreq = rec.sfreq
        elif rec.sfreq != sfreq:
            raise ReadError(f"sampling rate {rec.sfreq} differs from {sfreq} of the other records", root / name)
        peaks = read_beat_csv(root / f"{name}_all_beats.csv")
        pvc_file = root / f"{name}_pvc_beats.csv"
        pvc = set(read_beat_csv(pvc_file).tolist()) if pvc_file.is_file() else set()
        rr = rr_features(peaks, rec.sfreq)
        b, a = int(round(before * rec.sfreq)), int(round(after * rec.sfreq))
        keep = (peaks - b >= 0) & (peaks + a <= rec.n_times)
        idx = peaks[keep][:, None] + np.arange(-b, a)[None, :]
        xs.append(rec.data[0][idx][:, None, :])
        ys.append(np.array([int(p in pvc) for p in peaks[keep]]))
        rrs.append(rr[keep])
        peaks_all.append(peaks[keep])
        rids.extend([name] * int(keep.sum()))
    y = np.concatenate(ys)
    rid = np.array(rids)
    return SignalSet(
        x=np.concatenate(xs).astype(np.float32), y=y, classes=np.where(y == 1, "V", "N"),
        record_ids=rid, subject_ids=rid.copy(), sfreq=float(sfreq),
        features={"rr": np.concatenate(rrs), "peak": np.concatenate(peaks_all)},
        meta={"kind": "wfdb_beats", "before_s": before, "after_s": after, "root": str(root)},
    )


def load_ucr(root: str | Path | None = None, *, splits: Sequence[str] = ("TRAIN", "TEST"),
             normal_label: int = 1) -> SignalSet:
    """UCR beats: every ``*_TRAIN.txt`` / ``*_TEST.txt`` in ``root`` (or ``root`` itself when a file).

    ``y`` = 1 for every class other than ``normal_label`` (ECG200: -1 infarction; ECG5000: 2-5);
    ``classes`` keeps the original labels; ``meta["split"]`` per item says which file it came from.
    Each series is its own record/subject (UCR has no patient ids).
    """
    root = Path(root) if root is not None else _root(None, "ucr")
    if root.is_file():
        files = [root]
    else:
        root = _root(root, "ucr")
        files = [f for s in splits for f in sorted(root.glob(f"*_{s}.txt"))]
    if not files:
        raise ReadError(f"no UCR files (*_{'/'.join(splits)}.txt) found", root)
    xs, labs, rids, split = [], [], [], []
    for f in files:
        x, lab = read_ucr(f)
        xs.append(x)
        labs.append(lab)
        stem = record_id_from_path(f)
        rids.extend(f"{stem}_{i:04d}" for i in range(len(x)))
        split.extend([stem.rsplit("_", 1)[-1]] * len(x))
    lens = {x.shape[1] for x in xs}
    if len(lens) != 1:
        raise ReadError(f"UCR files differ in series length {sorted(lens)}", root)
    lab = np.concatenate(labs)
    rid = np.array(rids)
    return SignalSet(
        x=np.concatenate(xs)[:, None, :], y=(lab != normal_label).astype(int), classes=lab.astype(str),
        record_ids=rid, subject_ids=rid.copy(), sfreq=None,
        features={"split": np.array(split)}, meta={"kind": "ucr", "files": [str(f) for f in files]},
    )


LOADERS = {
    "bonn": load_bonn,
    "heart_sounds": load_heart_sounds,
    "physionet2016": load_physionet2016,
    "wfdb_beats": load_wfdb_beats,
    "ucr": load_ucr,
}


def load(kind: str, root: str | Path | None = None, **kwargs):
    """Load signal dataset ``kind`` (one of :data:`LOADERS`) from ``root``."""
    if kind not in LOADERS:
        raise InputError(f"unknown signal dataset kind {kind!r}; known: {', '.join(LOADERS)}")
    return LOADERS[kind](root, **kwargs)


def _ids_labels(items: list[SignalRecord] | SignalSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(items, SignalSet):
        return items.subject_ids, items.classes, items.y
    return (np.array([str(r.subject_id) for r in items]), np.array([str(r.label) for r in items]),
            np.array([int(r.meta.get("abnormal", 0)) for r in items]))


def split(items: list[SignalRecord] | SignalSet, fractions: dict[str, float] | Sequence[float] = (0.7, 0.15, 0.15),
          *, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded subject-wise split (stratified by normal/abnormal): split name -> item indices."""
    from medad.evaluation.splits import split_by_subject

    subjects, _, y = _ids_labels(items)
    return split_by_subject(subjects, fractions, seed=seed, stratify=y)


def summarize(items: list[SignalRecord] | SignalSet, *, seed: int = 0) -> dict[str, Any]:
    """Counts per label (overall and per default subject-wise split) and subjects, for
    ``medad datasets inspect``."""
    subjects, labels, y = _ids_labels(items)
    out: dict[str, Any] = {"n_items": len(labels), "per_label": _count(labels), "n_abnormal": int(y.sum()),
                           "n_subjects": len(set(subjects.tolist()))}
    parts = split(items, seed=seed) if len(set(subjects.tolist())) >= 3 else {}
    out["per_split_label"] = {k: _count(labels[v]) for k, v in parts.items()}
    own = len(set(subjects.tolist())) == len(labels)  # Bonn, Yaseen, UCR: no person ids in the data
    out["split_protocol"] = (f"by {'recording (the data carry no subject ids: each recording counts as its own subject)' if own else 'subject'}"
                             f", seed {seed}, 70/15/15, stratified by abnormal")
    if isinstance(items, SignalSet):
        out.update(sfreq=items.sfreq, item_shape=list(items.x.shape[1:]))
    else:
        durs = [r.duration for r in items]
        out.update(sfreq=sorted({r.sfreq for r in items}),
                   duration_s=[float(min(durs)), float(max(durs))] if durs else None)
    return out


def _count(labels: np.ndarray) -> dict[str, int]:
    u, c = np.unique(labels, return_counts=True)
    return {str(k): int(v) for k, v in zip(u, c)}
