"""``medad bench screening-speed``: how long screening a 24-hour, 23-channel, 256 Hz EDF takes,
and how much memory it needs (goal: < 60 s on 2 CPU cores, < 2 GB peak).

The recording is generated once (EEG-like: AR(1) background + a 10 Hz rhythm, a few inserted
spike bursts) and kept in a cache folder outside the repository. It is written record by record
with a small streaming EDF writer, so it never exists in memory as a whole. The features
detector is trained on a few minutes of signal generated the same way (other seed).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PHYS_RANGE_UV = 500.0


def _edf_field(value: Any, width: int) -> bytes:
    s = str(value)
    if len(s) > width:
        s = s[:width]
    return s.ljust(width).encode("ascii")


def write_edf_streaming(path: str | Path, blocks, *, n_channels: int, sfreq: int, n_records: int,
                        labels: list[str] | None = None) -> Path:
    """Write an EDF (16-bit, 1-second data records) from an iterator of ``(C, k * sfreq)`` blocks
    in microvolts, one block at a time (edfio/MNE want the whole signal in memory)."""
    path = Path(path)
    labels = labels or [f"EEG{i + 1:02d}" for i in range(n_channels)]
    start = _dt.datetime(2020, 1, 1)
    hdr = b"".join([
        _edf_field("0", 8), _edf_field("X X X X", 80), _edf_field("Startdate 01-JAN-2020 X medad X", 80),
        _edf_field(start.strftime("%d.%m.%y"), 8), _edf_field(start.strftime("%H.%M.%S"), 8),
        _edf_field(256 * (n_channels + 1), 8), _edf_field("", 44), _edf_field(n_records, 8),
        _edf_field(1, 8), _edf_field(n_channels, 4),
    ])
    per_ch = [
        [_edf_field(lab, 16) for lab in labels],
        [_edf_field("AgAgCl electrode", 80)] * n_channels,
        [_edf_field("uV", 8)] * n_channels,
        [_edf_field(-PHYS_RANGE_UV, 8)] * n_channels,
        [_edf_field(PHYS_RANGE_UV, 8)] * n_channels,
        [_edf_field(-32768, 8)] * n_channels,
        [_edf_field(32767, 8)] * n_channels,
        [_edf_field("HP:0.1Hz LP:100Hz", 80)] * n_channels,
        [_edf_field(sfreq, 8)] * n_channels,
        [_edf_field("", 32)] * n_channels,
    ]
    hdr += b"".join(b"".join(f) for f in per_ch)
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    gain = 65535.0 / (2 * PHYS_RANGE_UV)
    with open(tmp, "wb") as fh:
        fh.write(hdr)
        for blk in blocks:
            k = blk.shape[1] // sfreq
            dig = np.clip(np.round((blk - (-PHYS_RANGE_UV)) * gain - 32768), -32768, 32767).astype("<i2")
            # EDF data record = all samples of channel 0 for 1 s, then channel 1, ...
            fh.write(dig.reshape(n_channels, k, sfreq).transpose(1, 0, 2).tobytes())
            written += k
    if written != n_records:
        tmp.unlink()
        raise RuntimeError(f"wrote {written} records, header says {n_records}")
    os.replace(tmp, path)
    return path


def eeg_like_blocks(seconds: int, n_channels: int, sfreq: int, *, seed: int, block_seconds: int = 600,
                    spikes_every_s: float | None = None):
    """Yield ``(C, block * sfreq)`` float32 blocks in µV of EEG-like signal (AR(1) background,
    10 Hz rhythm); optionally a 5 s spike burst every ``spikes_every_s`` seconds."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    state = np.zeros((n_channels, 1))
    phase = rng.uniform(0, 2 * np.pi, (n_channels, 1))
    done = 0
    while done < seconds:
        k = min(block_seconds, seconds - done)
        n = k * sfreq
        e = rng.standard_normal((n_channels, n), dtype=np.float32)
        x, state = lfilter([1.0], [1.0, -0.95], e, axis=1, zi=state * 0.95)
        t = (done * sfreq + np.arange(n)) / sfreq
        x = 8.0 * x + 20.0 * np.sin(2 * np.pi * 10.0 * t + phase)
        if spikes_every_s:
            bursts = burst_times(seconds, spikes_every_s)
            for s0 in bursts[(bursts >= done) & (bursts < done + k - 5.5)] - done:
                for s in np.arange(s0, s0 + 5.0, 0.3):
                    i = int(s * sfreq)
                    x[:, i:i + 4] += np.array([150.0, -250.0, 120.0, -40.0])
        yield x.astype(np.float32)
        done += k


def burst_times(seconds: float, every_s: float) -> np.ndarray:
    """Start times of the inserted 5 s spike bursts: mid-way through every ``every_s`` period."""
    return np.arange(every_s / 2, seconds - 6.0, every_s)


def make_recording(path: Path, hours: float, n_channels: int, sfreq: int, seed: int,
                   spikes_every_s: float | None = None) -> Path:
    """Generate (or reuse, when present with the right size) the benchmark EDF."""
    seconds = int(round(hours * 3600))
    expected = 256 * (n_channels + 1) + seconds * n_channels * sfreq * 2
    if path.is_file() and path.stat().st_size == expected:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_edf_streaming(path, eeg_like_blocks(seconds, n_channels, sfreq, seed=seed,
                                                     spikes_every_s=spikes_every_s),
                               n_channels=n_channels, sfreq=sfreq, n_records=seconds)


def check_options(*, hours: float, n_channels: int, sfreq: float, train_minutes: float) -> None:
    """Refuse settings the generated EDF cannot have, before anything is generated (a 24-hour file
    takes minutes): the EDF holds 1 s records, so the rate must be a whole number of samples."""
    from medad.errors import ConfigError

    if not hours * 3600 >= 60:
        raise ConfigError(f"--hours must be at least one minute (1/60), got {hours}")
    if n_channels < 1:
        raise ConfigError(f"--n-channels must be at least 1, got {n_channels}")
    if not (sfreq > 0 and float(sfreq).is_integer()):
        raise ConfigError(f"--sfreq must be a whole number of Hz > 0 (the EDF has 1 s records), got {sfreq}")
    if not train_minutes > 0:
        raise ConfigError(f"train_minutes must be > 0, got {train_minutes}")


def run_screening_speed(out: str | Path, *, hours: float = 24.0, n_channels: int = 23, sfreq: float = 256.0,
                        cache_dir: str | Path | None = None, copy_to: str | Path | None = None,
                        train_minutes: float = 15.0) -> dict[str, Any]:
    """Generate the recordings, train the features detector, screen the long recording and
    write ``<out>/screening-speed.{json,md}`` (copied to ``copy_to`` when given)."""
    import torch

    from medad.bench.common import markdown_table, run_record, write_benchmark
    from medad.utils import Timer, peak_rss_mb
    from pipelines.screening import ScreeningConfig, screen_folder, train_screening

    check_options(hours=hours, n_channels=n_channels, sfreq=sfreq, train_minutes=train_minutes)
    record = run_record(uses_data_root=False)  # generated data: no data root

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    fs = int(sfreq)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "medad-bench-cache"
    tag = f"{hours:g}h_{n_channels}ch_{fs}Hz"
    long_dir = cache / f"long_{tag}"
    cached = (long_dir / f"screening_{tag}.edf").is_file()
    with Timer() as t_gen:
        long_f = make_recording(long_dir / f"screening_{tag}.edf", hours, n_channels, fs, seed=1, spikes_every_s=3600.0)
    train_dir = cache / f"train_{n_channels}ch_{fs}Hz"
    for i in range(3):  # three short normal recordings: two to train on, one to calibrate on
        make_recording(train_dir / f"normal_{i}.edf", train_minutes / 180.0, n_channels, fs, seed=100 + i)
    rss_before = peak_rss_mb()
    work = Path(tempfile.mkdtemp(prefix="medad-speed-"))
    try:
        cfg = ScreeningConfig(detector="features", bandpass=[0.5, 45.0], notch=50.0, window_seconds=2.0,
                              step_seconds=2.0, chunk_seconds=300.0, window_fpr=0.001, min_windows=2)
        with Timer() as t_train:
            model = train_screening(train_dir, work / "model", cfg, progress=False)
        load_before = os.getloadavg()[0]
        cpu0 = time.process_time()
        with Timer() as t_screen:
            summary = screen_folder(model, long_f, work / "out", plots=True, progress=True)
        cpu_screen = time.process_time() - cpu0
        load_after = os.getloadavg()[0]
        rss_peak = peak_rss_mb()
        rec = summary["recordings"][0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if rec["status"] != "ok":
        raise RuntimeError(f"screening failed: {rec['error']}")
    ivs = rec["intervals"]
    bursts = burst_times(hours * 3600, 3600.0)
    found = sum(any(iv["start_s"] <= b + 5 and iv["end_s"] >= b for iv in ivs) for b in bursts)
    # flagged time outside the bursts: false alarms on normal background
    false_s = sum(iv["end_s"] - iv["start_s"] for iv in ivs
                  if not any(iv["start_s"] <= b + 5 and iv["end_s"] >= b for b in bursts))
    results = {
        "recording": {"hours": hours, "channels": n_channels, "sfreq": sfreq, "file_mb": round(long_f.stat().st_size / 2**20, 1),
                      "content": "EEG-like AR(1) + 10 Hz rhythm; a 5 s spike burst mid-way through every hour"},
        "protocol": {"detector": "features (Mahalanobis, Ledoit-Wolf)", "train": f"{train_minutes:g} min of generated normal EEG (2/3 fit, 1/3 calibrate)",
                     "windows": "2 s, no overlap", "chunk_seconds": cfg.chunk_seconds,
                     "preprocessing": "band-pass 0.5-45 Hz, notch 50 Hz, per-recording robust scale",
                     "threshold": "window FPR 0.001 on held-out normal recording; >= 2 consecutive windows"},
        "screen_seconds": round(t_screen.seconds, 2),
        "screen_cpu_seconds": round(cpu_screen, 2),
        "workers": cfg.workers,
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "cpu_count": os.cpu_count(),
        "train_seconds": round(t_train.seconds, 2),
        "generate_seconds": round(t_gen.seconds, 2), "recording_reused_from_cache": cached,
        "realtime_factor": round(hours * 3600 / t_screen.seconds, 1),
        "peak_rss_mb": round(rss_peak, 1),
        "peak_rss_mb_before_screening": round(rss_before, 1),
        "n_windows": rec["n_windows"], "n_flagged_intervals": rec["n_intervals"],
        "bursts_found": f"{found}/{len(bursts)}",
        "flagged_seconds": rec["flagged_seconds"], "false_alarm_seconds": round(false_s, 1),
        "goals": {"screen_seconds": "< 60 on 2 CPU cores", "peak_rss_mb": "< 2048"},
        "note": "peak RSS is the whole benchmark process (imports, generation, training, screening); "
                "wall seconds depend on other jobs (see load_average_1min against cpu_count); CPU seconds "
                "are the screening's own work summed over its threads",
    }
    md = "# Screening speed\n\n" + markdown_table(
        ["recording", "screen s (wall)", "screen CPU s", "x real time", "peak RSS MB", "windows", "flagged spans",
         "bursts found", "false-alarm s"],
        [[f"{hours:g} h x {n_channels} ch x {fs} Hz EDF", results["screen_seconds"], results["screen_cpu_seconds"],
          results["realtime_factor"],
          results["peak_rss_mb"], rec["n_windows"], rec["n_intervals"], results["bursts_found"], results["false_alarm_seconds"]]],
        digits=1,
    ) + (f"\nGoals: < 60 s on 2 CPU cores, < 2 GB. {results['note']}. Load average during the run: "
         f"{results['load_average_1min']} on {os.cpu_count()} cores.\n"
         f"Protocol: {results['protocol']}.\n")
    print(md)
    write_benchmark(out, "screening-speed", results, md, record=record)
    if copy_to:
        write_benchmark(copy_to, "screening-speed", results, md, record=record)
    return results
