"""Cityscapes, fine annotations, train split: 2975 street scenes from 18 cities (PNG, 2048x1024).

Download: the archives need a registered account (https://www.cityscapes-dataset.com/register/).
With ``CITYSCAPES_USERNAME`` and ``CITYSCAPES_PASSWORD`` set, the pipeline logs in the way the
official ``csDownload`` tool (cityscapesscripts) does: POST to ``/login`` (a redirect means
success), the package list from ``/downloads/?list``, the published MD5 from
``/md5-sum/?packageID=N`` and the archive from ``/file-handling/?packageID=N`` (resumable).
Without them, archives placed by hand in ``resources/raw/cityscapes/`` are used.

Preparation (docs/protocol.md, "Datasets": 512 x 256 (W x H), RGB, 19 evaluation classes):
- ``leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` with
  ``gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``;
- label ids 0..33 map to the 19 train ids of cityscapesscripts' ``labels.py``; every other id
  (unlabeled, ego vehicle, ..., caravan, trailer) is void = ignore index 255
  (``void: class6`` = the original code's in-place remapping, which turns void into train id 19
  and then, since 19 is also the label id of traffic light, into class 6: a quirk);
- images bilinear, labels nearest-neighbour, group id = city.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..download import DownloadError, Policy, _session, parse_checksum, request
from ..prepared import PreparedWriter
from .base import Archive, Source, not_hidden
from .imaging import read_image, resize_image, resize_mask, to_chw

log = logging.getLogger("segmia")

USER_VAR, PASSWORD_VAR = "CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"
IGNORE_INDEX = 255
DEFAULTS = {"height": 256, "width": 512, "channel_order": "rgb", "void": "ignore"}
#: label id -> train id (cityscapesscripts labels.py); ids not listed are void
TRAIN_IDS = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
MAX_LABEL_ID = 33
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
#: finely annotated images per city of the official splits (leftImg8bit/gtFine_trainvaltest)
TRAIN_CITY_SIZES = {
    "aachen": 174,
    "bochum": 96,
    "bremen": 316,
    "cologne": 154,
    "darmstadt": 85,
    "dusseldorf": 221,
    "erfurt": 109,
    "hamburg": 248,
    "hanover": 196,
    "jena": 119,
    "krefeld": 99,
    "monchengladbach": 94,
    "strasbourg": 365,
    "stuttgart": 196,
    "tubingen": 144,
    "ulm": 95,
    "weimar": 142,
    "zurich": 122,
}  # 2975 images, 18 cities: the only split preparation reads (group id = city)
VAL_CITY_SIZES = {"frankfurt": 267, "lindau": 59, "munster": 174}  # 500
TEST_CITY_SIZES = {
    "berlin": 544,
    "bielefeld": 181,
    "bonn": 46,
    "leverkusen": 58,
    "mainz": 298,
    "munich": 398,
}  # 1525, labels withheld


def lookup(void: str = "ignore") -> np.ndarray:
    """A 256-entry table label id -> train id (void -> 255, or 6 with the quirk)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[: MAX_LABEL_ID + 1] = 6 if void == "class6" else IGNORE_INDEX
    for label_id, train_id in TRAIN_IDS.items():
        table[label_id] = train_id
    return table


def keep(name: str) -> bool:
    """Extract only what preparation reads: the train images and the train label-id maps."""
    parts = name.split("/")
    if not not_hidden(name) or len(parts) < 2:
        return not_hidden(name)  # README, license.txt
    if parts[0] == "leftImg8bit":
        return parts[1] == "train" and name.endswith(IMAGE_SUFFIX)
    if parts[0] == "gtFine":
        return parts[1] == "train" and name.endswith(LABEL_SUFFIX)
    return False


def pairs(raw: str | Path) -> list[tuple[str, str, Path, Path]]:
    """(sample id, city, image, label) of the train split."""
    raw = Path(raw)
    images_dir, labels_dir = raw / "leftImg8bit" / "train", raw / "gtFine" / "train"
    for d, archive in (
        (images_dir, "leftImg8bit_trainvaltest.zip"),
        (labels_dir, "gtFine_trainvaltest.zip"),
    ):
        if not d.is_dir():
            raise DataError(f"{d}: missing; {archive} does not have the Cityscapes layout")
    images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in images_dir.glob(f"*/*{IMAGE_SUFFIX}")}
    labels = {p.name[: -len(LABEL_SUFFIX)]: p for p in labels_dir.glob(f"*/*{LABEL_SUFFIX}")}
    if not images:
        raise DataError(f"{images_dir}: no *{IMAGE_SUFFIX} images found")
    for have, lack, what, where in (
        (images, labels, "label map", labels_dir),
        (labels, images, "image", images_dir),
    ):
        missing = sorted(set(have) - set(lack))
        if missing:
            raise DataError(
                f"{have[missing[0]]}: no matching {what} under {where} ({len(missing)} file(s) "
                f"unpaired: {', '.join(missing[:5])})"
            )
    out = []
    for sid in sorted(images):
        city = images[sid].parent.name
        if labels[sid].parent.name != city:
            raise DataError(
                f"{labels[sid]}: in city folder {labels[sid].parent.name}, its image in {city}"
            )
        out.append((sid, city, images[sid], labels[sid]))
    return out


def check_layout(raw: Path) -> None:
    pairs(raw)


def prepare(raw: str | Path, params: dict, out: str | Path, name: str = "cityscapes") -> int:
    params = {**DEFAULTS, **params}
    height, width = params["height"], params["width"]
    table = lookup(params["void"])
    items = pairs(raw)
    log.info(
        "cityscapes: %d train images from %d cities", len(items), len({c for _, c, _, _ in items})
    )
    with PreparedWriter(out, len(items), 3, height, width) as writer:
        for i, (sid, city, image_path, label_path) in enumerate(items):
            image = read_image(image_path, "RGB")
            label = read_image(label_path, "label")
            if image.shape[:2] != label.shape:
                raise DataError(
                    f"{label_path}: label map is {label.shape[1]}x{label.shape[0]} but its image "
                    f"is {image.shape[1]}x{image.shape[0]}"
                )
            top = int(label.max())
            if top > MAX_LABEL_ID:
                bad = np.unique(label[label > MAX_LABEL_ID])[:10].tolist()
                raise DataError(
                    f"{label_path}: unexpected label id(s) {bad}; Cityscapes label ids are "
                    f"0..{MAX_LABEL_ID}. Is this a *_gtFine_labelIds.png file?"
                )
            image = to_chw(resize_image(image, height, width), params["channel_order"])
            mask = table[resize_mask(label, height, width)]
            writer.add(image, mask, sid, city)
            if (i + 1) % 500 == 0:
                log.info("cityscapes: %d / %d", i + 1, len(items))
        writer.finish(
            {
                "name": name,
                "source": "cityscapes",
                "num_classes": 19,
                "ignore_index": IGNORE_INDEX,
                "classes": CLASSES,
                "prepare": params,
            }
        )
    return len(items)


class CityscapesRemote:
    """A logged-in session on the Cityscapes site (or a server speaking the same protocol)."""

    allow_redirects = False

    def __init__(self, base_url: str, policy: Policy, env):
        user, password = env.get(USER_VAR), env.get(PASSWORD_VAR)
        if not user or not password:
            raise DownloadError(
                f"the Cityscapes archives need an account, and {USER_VAR} / {PASSWORD_VAR} are "
                "not set in the environment: register at "
                "https://www.cityscapes-dataset.com/register/ and export both variables (the "
                "password never appears in logs), or download the archives by hand"
            )
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.session = _session()
        login = f"{self.base_url}/login"
        request(self.session, "GET", login, policy, allow_redirects=False)
        response = request(
            self.session,
            "POST",
            login,
            policy,
            data={"username": user, "password": password, "submit": "Login"},
            allow_redirects=False,
        )
        if response.status_code != 302:
            raise DownloadError(
                f"the Cityscapes login at {login} failed (HTTP {response.status_code}, no redirect): "
                f"check the account in {USER_VAR} / {PASSWORD_VAR}"
            )
        listing = request(
            self.session, "GET", f"{self.base_url}/downloads/?list", policy, allow_redirects=False
        )
        try:
            listing.raise_for_status()
            self.packages = {p["name"]: int(p["packageID"]) for p in listing.json()}
        except Exception as err:
            raise DownloadError(
                f"the Cityscapes package list ({self.base_url}/downloads/?list) could not be read "
                f"({type(err).__name__})"
            ) from None

    def package(self, archive) -> int:
        if archive.filename not in self.packages:
            raise DownloadError(
                f"the account has no access to {archive.filename} (not in its package list): "
                "log in on the website and accept the licence for it"
            )
        return self.packages[archive.filename]

    def url(self, archive) -> str:
        return f"{self.base_url}/file-handling/?packageID={self.package(archive)}"

    def checksum(self, archive) -> tuple[str, str] | None:
        url = f"{self.base_url}/md5-sum/?packageID={self.package(archive)}"
        response = request(self.session, "GET", url, self.policy, allow_redirects=False)
        if response.status_code != 200 or not response.text.split():
            log.warning("no published MD5 for %s (HTTP %d)", archive.filename, response.status_code)
            return None
        try:
            return parse_checksum(f"md5:{response.text.split()[0]}", url)
        except DataError:
            log.warning("unexpected MD5 answer for %s; ignoring it", archive.filename)
            return None


SOURCE = Source(
    name="cityscapes",
    title="Cityscapes",
    base_url="https://www.cityscapes-dataset.com",
    home="https://www.cityscapes-dataset.com/downloads/ (log in first)",
    archives=(
        Archive("leftImg8bit_trainvaltest.zip", "11 GB"),
        Archive("gtFine_trainvaltest.zip", "241 MB"),
    ),
    keep=keep,
    check_layout=check_layout,
    prepare=prepare,
    remote=CityscapesRemote,
    notes=(
        f"; or set {USER_VAR} and {PASSWORD_VAR} to the account of a registered user "
        "(https://www.cityscapes-dataset.com/register/) to let the pipeline download them"
    ),
    defaults=DEFAULTS,
)
