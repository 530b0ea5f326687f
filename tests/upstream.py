"""Tiny stand-ins for the public datasets' archives, and a local HTTP server that serves them.

The archives follow the upstream layouts (MSD Task03 tar, Kvasir-SEG zip, Cityscapes zips with
the real folder and file-name patterns) with known voxel and pixel values, so the tests can
check what preparation makes of them. :class:`Upstream` serves files on 127.0.0.1 with HTTP
Range support, can drop a connection mid-file, answer 404, and speaks the Cityscapes login
protocol (POST /login, /downloads/?list, /md5-sum/, /file-handling/).
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

# --- MSD Task03 Liver -----------------------------------------------------------------------------

#: HU value of every voxel of axial slice z (the whole slice is uniform, so resizing keeps it)
HU_BY_SLICE = [-1000, -500, 0, 300, 1000, -100, 400, 200, 60, -1000]
#: its 8-bit value under the default window [-100, 400]: (clip(hu) + 100) * 255 / 500
UINT8_BY_SLICE = [0, 0, 51, 204, 255, 0, 255, 153, 82, 0]
LIVER_SHAPE = (16, 16, 10)
#: liver occupies slices 2 .. LIVER_LAST[p] of patient p
LIVER_LAST = {0: 7, 1: 6, 2: 5}


def liver_volumes(patient: int) -> tuple[np.ndarray, np.ndarray]:
    """(image HU int16, label uint8) of one patient in RAS voxel order."""
    image = np.empty(LIVER_SHAPE, dtype=np.int16)
    for z, hu in enumerate(HU_BY_SLICE):
        image[:, :, z] = hu
    label = np.zeros(LIVER_SHAPE, dtype=np.uint8)
    label[4:12, 4:12, 2 : LIVER_LAST[patient] + 1] = 1  # liver
    label[6:8, 6:8, 4] = 2  # tumour
    return image, label


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    return gzip.compress(img.to_bytes(), mtime=0)


def liver_tree(patients=(0, 1, 2), lps: tuple[int, ...] = (1,)) -> dict[str, bytes]:
    """Files of Task03_Liver/ (patient in ``lps`` stored in LPS voxel order, same anatomy)."""
    files: dict[str, bytes] = {}
    training = []
    for p in patients:
        image, label = liver_volumes(p)
        affine = np.diag([2.0, 2.0, 5.0, 1.0])
        if p in lps:  # flip x and y: the same physical volume, stored the other way round
            image, label = image[::-1, ::-1], label[::-1, ::-1]
            affine = np.diag([-2.0, -2.0, 5.0, 1.0])
        files[f"Task03_Liver/imagesTr/liver_{p}.nii.gz"] = nifti_bytes(image, affine)
        files[f"Task03_Liver/labelsTr/liver_{p}.nii.gz"] = nifti_bytes(label, affine)
        training.append(
            {"image": f"./imagesTr/liver_{p}.nii.gz", "label": f"./labelsTr/liver_{p}.nii.gz"}
        )
    files["Task03_Liver/imagesTr/._liver_0.nii.gz"] = b"macOS metadata, not a volume"
    files["Task03_Liver/imagesTs/liver_99.nii.gz"] = nifti_bytes(liver_volumes(0)[0])
    files["Task03_Liver/dataset.json"] = json.dumps(
        {
            "name": "Liver",
            "labels": {"0": "background", "1": "liver", "2": "cancer"},
            "numTraining": len(training),
            "training": training,
            "test": ["./imagesTs/liver_99.nii.gz"],
        }
    ).encode()
    return files


def tar_bytes(files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], raw_names: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**files, **(raw_names or {})}.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


# --- Kvasir-SEG -----------------------------------------------------------------------------------

KVASIR_RGB = (230, 40, 20)  # a reddish image: R high, B low


def jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def kvasir_mask(height: int = 48, width: int = 64) -> np.ndarray:
    """Rows 16..31: left half 255 (polyp), right half 200 (a JPEG-ish grey: polyp at half range,
    background under the original code's floor)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[16:32, : width // 2] = 255
    mask[16:32, width // 2 :] = 200
    return mask


def kvasir_tree(n: int = 6, root: str = "kvasir-seg") -> dict[str, bytes]:
    files = {}
    for i in range(n):
        sid = f"cju{i:04d}abc"
        height, width = (48, 64) if i % 2 == 0 else (64, 80)  # variable sizes, as upstream
        image = np.empty((height, width, 3), dtype=np.uint8)
        image[...] = KVASIR_RGB
        files[f"{root}/images/{sid}.jpg"] = jpeg(image)
        files[f"{root}/masks/{sid}.jpg"] = jpeg(kvasir_mask(height, width))
    files[f"{root}/kavsir_bboxes.json"] = b"{}"
    return files


# --- Cityscapes -----------------------------------------------------------------------------------

CITY_RGB = (10, 100, 200)
CITY_IMAGES = {"aachen": ["aachen_000000_000019", "aachen_000001_000019"],
               "bochum": ["bochum_000000_000313", "bochum_000000_001097"]}  # fmt: skip
STRIPE = 4  # label id i fills columns [4 i, 4 i + 4)
CITY_SIZE = (16, 34 * STRIPE)  # H x W: every label id 0..33 once


def city_labels() -> np.ndarray:
    ids = np.repeat(np.arange(34, dtype=np.uint8), STRIPE)
    return np.tile(ids, (CITY_SIZE[0], 1))


def cityscapes_trees() -> dict[str, dict[str, bytes]]:
    """Files of leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip."""
    image = np.empty((*CITY_SIZE, 3), dtype=np.uint8)
    image[...] = CITY_RGB
    left = {"README": b"leftImg8bit", "license.txt": b"licence"}
    fine = {"README": b"gtFine", "license.txt": b"licence"}
    for city, stems in CITY_IMAGES.items():
        for stem in stems:
            left[f"leftImg8bit/train/{city}/{stem}_leftImg8bit.png"] = png(image)
            fine[f"gtFine/train/{city}/{stem}_gtFine_labelIds.png"] = png(city_labels())
            fine[f"gtFine/train/{city}/{stem}_gtFine_color.png"] = png(image)
            fine[f"gtFine/train/{city}/{stem}_gtFine_polygons.json"] = b"{}"
    left["leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"] = png(image)
    fine["gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"] = png(city_labels())
    return {"leftImg8bit_trainvaltest.zip": left, "gtFine_trainvaltest.zip": fine}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- the server -----------------------------------------------------------------------------------

USER, PASSWORD = "tester", "s3cret-Pa55"
PACKAGES = {"gtFine_trainvaltest.zip": 1, "leftImg8bit_trainvaltest.zip": 3}


class Upstream:
    """A local HTTP server: ``files`` maps URL paths to bytes; see the module docstring."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: dict[str, int] = {}  # path -> bytes sent before the connection drops
        self.status: dict[str, list[int]] = {}  # path -> statuses to answer first (e.g. 503)
        self.requests: list[tuple[str, str, dict]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                upstream._get(self)

            def do_POST(self):
                upstream._post(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a connection the test dropped on purpose (or a client that gave up)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]

    # -- handlers

    def _reply(self, h, status: int, body: bytes = b"", headers: dict | None = None):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _get(self, h):
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        self.requests.append(("GET", h.path, dict(h.headers)))
        queued = self.status.get(url.path)
        if queued:
            self._reply(h, queued.pop(0), b"busy")
            return
        if url.path == "/login":
            self._reply(h, 200, b"<form>login</form>")
            return
        if url.path in ("/downloads/", "/md5-sum/", "/file-handling/"):
            if "session=ok" not in h.headers.get("Cookie", ""):
                self._reply(h, 302, headers={"Location": "/login"})
                return
            if url.path == "/downloads/":
                listing = [
                    {"name": n, "packageID": str(i), "size": "1 MB", "thirdparty": "0"}
                    for n, i in PACKAGES.items()
                ]
                self._reply(
                    h, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}
                )
                return
            name = {str(i): n for n, i in PACKAGES.items()}.get(query.get("packageID", [""])[0])
            if name is None or f"/{name}" not in self.files:
                self._reply(h, 404, b"no such package")
                return
            if url.path == "/md5-sum/":
                self._reply(h, 200, f"{md5(self.files['/' + name])}  {name}\n".encode())
                return
            self._send_file(h, "/" + name)
            return
        if url.path not in self.files:
            self._reply(h, 404, b"not found")
            return
        self._send_file(h, url.path)

    def _send_file(self, h, path: str):
        data = self.files[path]
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self._reply(h, 416, headers={"Content-Range": f"bytes */{len(data)}"})
                return
        body = data[start:]
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        cut = self.drop_once.pop(path, None)
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)

    def _post(self, h):
        length = int(h.headers.get("Content-Length", 0))
        form = parse_qs(h.rfile.read(length).decode())
        self.requests.append(("POST", h.path, dict(h.headers)))
        if urlsplit(h.path).path != "/login":
            self._reply(h, 404)
            return
        if form.get("username") == [USER] and form.get("password") == [PASSWORD]:
            self._reply(h, 302, headers={"Location": "/", "Set-Cookie": "session=ok; Path=/"})
        else:
            self._reply(h, 200, b"<p>wrong user name or password</p>")


def free_port() -> int:
    """A port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
