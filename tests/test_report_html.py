"""HTML reports: self-contained pages that render in headless Chromium without any network
request, ``medad explain`` / ``medad report`` on the CLI, and no patient identity from DICOM
headers unless asked for."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from medad.report.html import CaseReport, Figure, check_self_contained, render_case, write_case_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium binary not found (Debian/Ubuntu: apt-get install -y chromium)")


def _green_png(path: Path) -> Path:
    """A pure-green 160x240 PNG: easy to find again in a screenshot."""
    import matplotlib.image as mpimg

    img = np.zeros((160, 240, 3), np.float32)
    img[..., 1] = 1.0
    mpimg.imsave(str(path), img)
    return path


def _case(tmp: Path) -> CaseReport:
    from medad.report import save_overlay

    yy, xx = np.mgrid[:48, :48]
    ov = save_overlay(np.random.default_rng(0).random((48, 48)), np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / 40),
                      tmp / "gradcam.png", title="score 0.9 > threshold 0.5")
    return CaseReport(case_id="case-001", decision="abnormal", score=0.9, threshold=0.5, method="gradcam",
                      model="TestNet", source="scan.nii.gz",
                      figures=[Figure(png=str(_green_png(tmp / "green.png")), title="marker", kind="figure"),
                               Figure(png=str(ov), title="Grad-CAM", kind="gradcam")])


# Chromium's own service hosts (time sync, component updater, ...): requests made by the browser,
# not by the page; everything else that reaches the recorder fails the test.
BROWSER_HOSTS = {"clients2.google.com", "update.googleapis.com", "clientservices.googleapis.com",
                 "accounts.google.com", "optimizationguide-pa.googleapis.com", "redirector.gvt1.com",
                 "edgedl.me.gvt1.com", "safebrowsingohttpgateway.googleapis.com", "content-autofill.googleapis.com",
                 "www.googleapis.com", "android.clients.google.com"}

QUIET_FLAGS = ["--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
               "--disable-client-side-phishing-detection", "--safebrowsing-disable-auto-update",
               "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate,"
               "AutofillServerCommunication,CertificateTransparencyComponentUpdater"]


def _sni(hello: bytes) -> str | None:
    """The server name of a TLS ClientHello (what an https:// request was for)."""
    try:
        i = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        i += 1 + hello[i]  # session id
        i += 2 + int.from_bytes(hello[i:i + 2], "big")  # cipher suites
        i += 1 + hello[i]  # compression methods
        end = i + 2 + int.from_bytes(hello[i:i + 2], "big")
        i += 2
        while i + 4 <= end:
            typ, n = int.from_bytes(hello[i:i + 2], "big"), int.from_bytes(hello[i + 2:i + 4], "big")
            if typ == 0:  # server_name: list length, name type, name length, name
                return hello[i + 9:i + 9 + int.from_bytes(hello[i + 7:i + 9], "big")].decode("ascii")
            i += 4 + n
    except (IndexError, UnicodeDecodeError):
        pass
    return None


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Serves files from a folder and records the host of every request it receives: the Host
    header for http, the server name of the TLS hello for https (which it then drops)."""

    folder: Path
    seen: list

    def handle(self):
        head = self.connection.recv(5, socket.MSG_PEEK)
        if head[:1] == b"\x16":  # TLS handshake
            n, data = 5 + int.from_bytes(head[3:5], "big"), b""
            while len(data) < n:
                chunk = self.connection.recv(n - len(data))
                if not chunk:
                    break
                data += chunk
            self.seen.append((_sni(data) or "(https, no server name)", "TLS hello"))
            return
        super().handle()

    def parse_request(self):
        ok = super().parse_request()
        self.seen.append((self.headers.get("Host", "") if ok else "", self.raw_requestline.decode("latin-1").strip()))
        return ok

    def do_GET(self):
        f = self.folder / self.path.lstrip("/").split("?")[0]
        if f.is_file():
            body = f.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if f.suffix == ".html" else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):  # keep test output clean
        pass


def _open_in_chromium(folder: Path, page: str, shot: Path) -> list[tuple[str, str]]:
    """Load ``page`` from a local server in headless Chromium, with every host name resolved to
    that same server: any request the page makes to the outside lands in the returned log."""
    handler = type("H", (_Recorder,), {"folder": folder, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *QUIET_FLAGS, f"--user-data-dir={folder / '.chromium'}", f"--host-resolver-rules=MAP * 127.0.0.1:{port}",
             "--window-size=1200,1400", f"--screenshot={shot}", f"http://127.0.0.1:{port}/{page}"],
            check=True, timeout=90, capture_output=True)
    finally:
        server.shutdown()
        server.server_close()
    return [(h, r) for h, r in handler.seen
            if h.split(":")[0] not in BROWSER_HOSTS
            and not (h == f"127.0.0.1:{port}" and r.split(" ")[1:2] in (["/" + page], ["/favicon.ico"]))]


def test_page_is_self_contained(tmp_path):
    text = render_case(_case(tmp_path))
    assert check_self_contained(text) == []
    assert text.count("data:image/png;base64,") == 2
    assert "Content-Security-Policy" in text
    bad = '<img src="https://cdn.example.com/a.png"><link href="//fonts.example.com/x.css">'
    assert len(check_self_contained(bad)) == 2  # the checker itself finds external references


@needs_chromium
def test_report_renders_in_chromium_without_network(tmp_path):
    import matplotlib.image as mpimg

    write_case_report(tmp_path / "report.html", _case(tmp_path))
    shot = tmp_path / "shot.png"
    outside = _open_in_chromium(tmp_path, "report.html", shot)
    assert outside == [], f"the report made network requests: {outside}"
    px = mpimg.imread(str(shot))[..., :3]
    assert px.std() > 0.05, "screenshot is blank"
    green = (px[..., 1] > 0.9) & (px[..., 0] < 0.1) & (px[..., 2] < 0.1)
    assert green.sum() > 20000, "the embedded image was not rendered"

    # control: the same setup sees a page that does fetch from the outside
    (tmp_path / "leaky.html").write_text('<html><body><img src="http://cdn.example.com/pixel.png">'
                                         '<img src="https://fonts.example.org/x.png"></body></html>')
    leaks = {h.split(":")[0] for h, _ in _open_in_chromium(tmp_path, "leaky.html", tmp_path / "shot2.png")}
    assert {"cdn.example.com", "fonts.example.org"} <= leaks, leaks


@pytest.fixture(scope="module")
def saved_pca(tmp_path_factory):
    """A small saved, calibrated classical detector (registered, so it loads from disk)."""
    from medad import registry

    rng = np.random.default_rng(0)
    det = registry.create("pca", n_components=4, image_size=16)
    det.fit(rng.normal(size=(30, 1, 64, 64)).astype(np.float32))
    det.calibrate(rng.normal(size=(20, 1, 64, 64)).astype(np.float32), fpr=0.05)
    return det.save(tmp_path_factory.mktemp("model") / "pca")


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, args)


def test_explain_cli_keeps_dicom_identity_out(tmp_path, saved_pca):
    import nibabel as nib
    import pydicom

    dcm = pydicom.data.get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(dcm)
    phi = [str(ds.PatientName), str(ds.PatientID)]
    assert all(phi)
    out = tmp_path / "results" / "ct"
    r = _cli(["explain", str(saved_pca), dcm, "--out", str(out), "--normalise", "zscore",
              "--method", "kernel_shap", "--n-samples", "48", "--n-segments", "12"])
    assert r.exit_code == 0, r.output
    html = (out / "report.html").read_text()
    assert "abnormal" in html or "normal" in html
    assert check_self_contained(html) == []
    for f in out.iterdir():  # no file written (report, case.json, figures) holds the identity
        if f.is_file():
            blob = f.read_bytes()
            assert not any(s.encode() in blob for s in phi), f"{f.name} leaks patient identity"
    # maps on the scan's own grid
    ref = nib.load(str(out / "kernel_shap.nii.gz"))
    assert ref.shape[:2] == (128, 128)

    # opt-in: the identity appears only when asked for
    out2 = tmp_path / "with_id"
    r = _cli(["explain", str(saved_pca), dcm, "--out", str(out2), "--method", "kernel_shap",
              "--n-samples", "32", "--n-segments", "8", "--include-identity"])
    assert r.exit_code == 0, r.output
    assert str(ds.PatientName) in (out2 / "report.html").read_text()

    # medad report over the results folder: one page per case + index, a bad case reported
    bad = tmp_path / "results" / "broken"
    bad.mkdir()
    (bad / "case.json").write_text("{not json")
    (tmp_path / "results" / "other").mkdir()
    _green_png(tmp_path / "results" / "other" / "frame_0001.png")
    r = _cli(["report", str(tmp_path / "results")])
    assert r.exit_code == 0, r.output
    index = (tmp_path / "results" / "index.html").read_text()
    assert "ct/report.html" in index and "other/report.html" in index and "broken" in index
    assert (tmp_path / "results" / "other" / "report.html").is_file()


def test_explain_cli_bad_input(tmp_path, saved_pca):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a nifti")
    r = _cli(["explain", str(saved_pca), str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0
    r = _cli(["explain", str(saved_pca), str(bad), "--out", str(tmp_path / "o"), "--method", "magic"])
    assert r.exit_code != 0


def test_explain_signal_recording(tmp_path):
    """A signal detector explains a text recording: flagged windows, attribution plot, report."""
    import torch

    from medad import registry
    from medad.report.cases import explain_file

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    win, sf = 128, 64.0
    x = rng.normal(size=(48, 1, win)).astype(np.float32)
    y = np.arange(48) % 2
    x[y == 1, :, 40:80] += 4 * np.sin(np.arange(40) * 1.3)  # abnormal windows: a burst
    det = registry.create("cnn1d", channels=(4, 8), dilations=(1,), epochs=3, batch_size=16, lr=3e-3)
    det.fit(x, y=y)
    det.calibrate(x[y == 0], fpr=0.05)
    rec = np.concatenate([x[0, 0], x[2, 0], x[1, 0], x[4, 0]])  # normal, normal, burst, normal
    f = tmp_path / "rec.txt"
    np.savetxt(f, rec)
    out = tmp_path / "out"
    case = explain_file(det, f, out, methods=["gradcam"], sfreq=sf, top_k=2)
    assert case.details["windows"] == 4
    assert (out / "gradcam.png").is_file() and (out / "report.html").is_file()
    assert check_self_contained((out / "report.html").read_text()) == []
    assert case.score == pytest.approx(float(det.score(x[[0, 2, 1, 4]]).score.max()), rel=1e-5)
