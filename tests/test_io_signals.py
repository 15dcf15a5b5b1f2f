"""Signal readers on real files from ../shared/data and on generated bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medad.config import data_root
from medad.errors import ReadError
from medad.io.signals import (
    describe, is_signal_file, iter_signal_chunks, read_header, read_signal, read_ucr, signal_format,
)

ROOT = data_root(required=False)
needs_data = pytest.mark.skipif(ROOT is None, reason="shared data root (../shared/data or $MEDAD_DATA_ROOT) absent")


def _d(rel: str) -> Path:
    return ROOT / rel


# ---------------------------------------------------------------------------- real files
@needs_data
def test_edf_neonatal():
    rec = read_signal(_d("eeg/neonatal_edf/eeg_burst_eg.edf"))
    assert rec.data.dtype == np.float32
    assert rec.data.shape == (21, 54016)
    assert rec.sfreq == 256.0
    assert rec.ch_names[0] == "EEG Fp1-Ref"
    assert abs(rec.duration - 211.0) < 0.1
    assert rec.record_id == "eeg_burst_eg" and rec.subject_id == "eeg_burst_eg"
    assert np.isfinite(rec.data).all() and rec.data.std() > 0


@needs_data
def test_edf_channel_pick_and_missing_channel():
    f = _d("eeg/neonatal_edf/demo.edf")
    rec = read_signal(f, channels=["C3-T5", 0])
    assert rec.ch_names == ["C3-T5", "F7-C3"]
    full = read_signal(f)
    np.testing.assert_array_equal(rec.data[1], full.data[0])
    with pytest.raises(ReadError, match="not found; channels are"):
        read_signal(f, channels=["Cz"])


@needs_data
def test_edf_plus_onset_annotation():
    rec = read_signal(_d("eeg/ieeg_seizure_onset/pt01_ecog_seizure_onset.edf"))
    assert rec.data.shape == (84, 3001) and rec.sfreq == 1000.0
    assert len(rec.annotations) == 1
    a = rec.annotations[0]
    assert a.onset == pytest.approx(1.0) and "onset" in a.description


@needs_data
def test_chunks_match_whole_and_cover_file():
    f = _d("eeg/neonatal_edf/demo.edf")
    whole = read_signal(f, channels=[0, 3])
    starts, pieces = [], []
    for s, x in iter_signal_chunks(f, chunk_seconds=100, overlap_seconds=10, picks=[0, 3]):
        assert x.dtype == np.float32 and x.shape[0] == 2
        i0 = int(round(s * 256))
        np.testing.assert_array_equal(x, whole.data[:, i0:i0 + x.shape[1]])
        starts.append(s)
        pieces.append(x.shape[1])
    assert starts[:3] == [0.0, 90.0, 180.0]
    assert int(round(starts[-1] * 256)) + pieces[-1] == whole.n_times


@needs_data
def test_wfdb_record_and_annotations():
    rec = read_signal(_d("ecg/wfdb_sample/100"))
    assert rec.data.shape == (2, 650000) and rec.sfreq == 360.0
    assert rec.ch_names == ["MLII", "V5"]
    assert len(rec.annotations) == 2274
    # sample -> seconds: the first beat label 'N' sits at sample 77
    n = [a for a in rec.annotations if a.description == "N"]
    assert n[0].onset == pytest.approx(77 / 360.0)
    assert rec.record_id == "100"
    # .hea and .dat name the same record
    assert read_header(_d("ecg/wfdb_sample/100.dat")).n_times == 650000
    chunks = list(iter_signal_chunks(_d("ecg/mitbih_subset/106"), 600))
    assert len(chunks) == 4 and chunks[0][1].shape == (1, 216000)


@needs_data
def test_wav_and_text():
    rec = read_signal(_d("pcg/yaseen/N/New_N_001.wav"))
    assert rec.sfreq == 8000.0 and rec.n_channels == 1 and rec.data.dtype == np.float32
    assert 0 < np.abs(rec.data).max() <= 1.0  # int16 PCM scaled to [-1, 1]
    rec = read_signal(_d("pcg/physionet2016_sample/a0007.wav"))
    assert rec.sfreq == 2000.0 and abs(rec.duration - 35.67) < 0.1
    bonn = read_signal(_d("eeg/bonn/A_Z/Z001.txt"), sfreq=173.61)
    assert bonn.data.shape == (1, 4097)
    assert bonn.data[0, 0] == pytest.approx(12.0)
    wc = read_signal(_d("eeg/wang_chung/c3.txt"), sfreq=100)  # several samples a line
    assert wc.data.shape == (1, 32678)
    with pytest.raises(ReadError, match="sampling rate"):
        read_signal(_d("eeg/bonn/A_Z/Z001.txt"))


@needs_data
def test_resample_on_read():
    rec = read_signal(_d("pcg/physionet2016_sample/a0007.wav"), sfreq=1000)
    assert rec.sfreq == 1000.0 and rec.meta["original_sfreq"] == 2000.0
    assert abs(rec.n_times - 71332 / 2) <= 1


@needs_data
def test_ucr():
    x, y = read_ucr(_d("ecg/ucr/ecg200/ECG200_TRAIN.txt"))
    assert x.shape == (100, 96) and set(np.unique(y)) == {-1, 1}
    assert (y == 1).sum() == 69
    x, y = read_ucr(_d("ecg/ucr/ecg5000/ECG5000_TRAIN.txt"))
    assert x.shape == (500, 140)
    assert {int(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))} == {1: 292, 2: 177, 3: 10, 4: 19, 5: 2}


@needs_data
def test_describe():
    d = describe(_d("ecg/wfdb_sample/100"))
    assert d["sfreq"] == 360.0 and d["n_channels"] == 2 and d["annotations"]["N"] == 2239
    d = describe(_d("eeg/neonatal_edf/demo.edf"))
    assert d["duration_s"] == pytest.approx(661.0) and d["format"] == "EDF"
    d = describe(_d("eeg/bonn/A_Z/Z001.txt"))
    assert d["sfreq"] is None and "sampling rate" in d["note"]


# ---------------------------------------------------------------------------- bad input
def _write_edf(path: Path, n_ch=2, sfreq=128, seconds=4, nan=False):
    import mne

    data = np.random.default_rng(0).normal(0, 20e-6, (n_ch, sfreq * seconds))
    info = mne.create_info([f"C{i}" for i in range(n_ch)], sfreq, "eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    mne.export.export_raw(str(path), raw, fmt="edf", overwrite=True, verbose="error")
    return data


def test_generated_edf_roundtrip_and_truncation(tmp_path):
    f = tmp_path / "sub-07_task-rest_eeg.edf"
    data = _write_edf(f)
    rec = read_signal(f)
    assert rec.subject_id == "07" and rec.record_id == "sub-07_task-rest_eeg"
    np.testing.assert_allclose(rec.data, data, atol=2e-7)  # 16-bit EDF quantisation
    cut = tmp_path / "cut.edf"
    cut.write_bytes(f.read_bytes()[: f.stat().st_size - 300])
    with pytest.raises(ReadError, match="truncated") as e:
        read_signal(cut)
    assert e.value.path == cut


@pytest.mark.parametrize("name, content, match", [
    ("missing.edf", None, "not found"),
    ("empty.edf", b"", "empty"),
    ("junk.edf", bytes(range(256)) * 8, "not a valid EDF"),
    ("junk.bdf", b"0" * 100, "not a valid BDF"),
    ("junk.fif", b"not a fif file at all" * 50, "cannot read as FIF"),
    ("signal.xyz", b"1 2 3", "unsupported signal file extension"),
    ("nan.txt", b"1\n2\nnan\n4\n", "NaN or infinite"),
    ("inf.txt", b"1\n2\ninf\n4\n", "NaN or infinite"),
    ("words.txt", b"1\n2\nhello\n", "non-numeric"),
    ("blank.txt", b"\n\n  \n", "empty"),
    ("binary.txt", bytes([0xff, 0xfe, 0x00, 0x81]) * 10, "not a text file"),
    ("bad.wav", b"RIFF....WAVEfmt " + b"\x00" * 30, "cannot read as WAV"),
    ("nohea", None, "WFDB header"),
])
def test_bad_files_raise_readerror_naming_file(tmp_path, name, content, match):
    f = tmp_path / name
    if content is not None:
        f.write_bytes(content)
    if name == "nohea":
        (tmp_path / "nohea.dat").write_bytes(b"\x00" * 100)
        f = tmp_path / "nohea.dat"
    with pytest.raises(ReadError, match=match) as e:
        read_signal(f, sfreq=100)
    assert e.value.path is not None and e.value.path.name.startswith(Path(name).stem)


def test_wav_int_scaling_nan_float_and_empty(tmp_path):
    from scipy.io import wavfile

    wavfile.write(tmp_path / "i16.wav", 1000, np.array([0, 16384, -32768, 32767], np.int16))
    rec = read_signal(tmp_path / "i16.wav")
    np.testing.assert_allclose(rec.data[0], [0, 0.5, -1.0, 32767 / 32768])
    wavfile.write(tmp_path / "stereo.wav", 1000, np.zeros((50, 2), np.int16) + 3)
    assert read_signal(tmp_path / "stereo.wav").data.shape == (2, 50)
    wavfile.write(tmp_path / "nan.wav", 1000, np.array([0.0, np.nan, 1.0], np.float32))
    with pytest.raises(ReadError, match="NaN"):
        read_signal(tmp_path / "nan.wav")
    wavfile.write(tmp_path / "empty.wav", 1000, np.zeros(0, np.int16))
    with pytest.raises(ReadError, match="empty"):
        read_signal(tmp_path / "empty.wav")


@pytest.mark.filterwarnings("ignore")  # wfdb's writers emit pandas deprecation warnings
def test_wfdb_written_record_and_corrupt_dat(tmp_path):
    import wfdb

    sig = np.random.default_rng(1).normal(0, 1, (1000, 2))
    wfdb.wrsamp("rec", fs=250, units=["mV", "mV"], sig_name=["I", "II"], p_signal=sig, fmt=["16", "16"],
                write_dir=str(tmp_path))
    wfdb.wrann("rec", "atr", np.array([100, 500]), np.array(["N", "V"]), write_dir=str(tmp_path))
    rec = read_signal(tmp_path / "rec.hea")
    assert rec.data.shape == (2, 1000) and rec.sfreq == 250
    assert [(a.onset, a.description) for a in rec.annotations] == [(0.4, "N"), (2.0, "V")]
    dat = tmp_path / "rec.dat"
    dat.write_bytes(dat.read_bytes()[:100])
    with pytest.raises(ReadError, match="WFDB") as e:
        read_signal(tmp_path / "rec")
    assert "rec" in str(e.value)


@pytest.mark.filterwarnings("ignore")
def test_wfdb_truncated_or_missing_dat_reported_at_the_header(tmp_path):
    """A cut-off or missing .dat is named as such when the header is read (screening reports it
    per file), not as wfdb's 'Samples were not loaded correctly' while reading samples."""
    import wfdb

    from medad.io.signals import read_header

    wfdb.wrsamp("rec", fs=100, units=["mV"], sig_name=["II"], p_signal=np.zeros((500, 1)), fmt=["212"],
                write_dir=str(tmp_path))
    assert read_header(tmp_path / "rec.hea").n_times == 500
    dat = tmp_path / "rec.dat"
    dat.write_bytes(dat.read_bytes()[:300])
    with pytest.raises(ReadError, match="truncated.*500 samples") as e:
        read_header(tmp_path / "rec.hea")
    assert e.value.path.name == "rec.dat"
    dat.unlink()
    with pytest.raises(ReadError, match="rec.dat named in the header is missing"):
        read_header(tmp_path / "rec.hea")


def test_format_detection(tmp_path):
    assert signal_format("x.EDF") == "mne" and signal_format("x.fif.gz") == "mne"
    assert signal_format("a.wav") == "wav" and signal_format("b.txt") == "text"
    (tmp_path / "labels.csv").write_text("a,1\n")
    assert not is_signal_file(tmp_path / "labels.csv")  # tables are not signals
    (tmp_path / "r.hea").write_text("r 1 100 10\n")
    assert signal_format(tmp_path / "r") == "wfdb"
    (tmp_path / "r.dat").write_bytes(b"\x00")
    assert is_signal_file(tmp_path / "r.hea") and not is_signal_file(tmp_path / "r.dat")
    with pytest.raises(ReadError):
        signal_format("noext")


def test_ucr_bad_files(tmp_path):
    f = tmp_path / "X_TRAIN.txt"
    f.write_text("1 0.1 0.2 0.3\n\n-1 0.4 oops 0.6\n")
    with pytest.raises(ReadError, match="line 3"):
        read_ucr(f)
    f.write_text("1 0.1 0.2 0.3\n2 0.1 0.2\n")
    with pytest.raises(ReadError, match="differ in length"):
        read_ucr(f)
    f.write_text("1.5 0.1 0.2\n")
    with pytest.raises(ReadError, match="integer class labels"):
        read_ucr(f)
