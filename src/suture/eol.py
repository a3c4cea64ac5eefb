"""End of life of OS releases: an offline table, or an endoflife.date-compatible API.

:func:`check_eol` tells whether an image's OS release (its os-release ``ID`` and
``VERSION_ID``, or a scanner's family name) is past the end of its regular security
support, as copa's EOL check does: from the table in ``suture/data/eol.json``
(source endoflife.date; its date of transcription is in the file), or, given
``api_url``, by asking ``GET {api_url}/{product}/releases/{release}`` (endoflife.date's
``/api/v1/products`` shape: ``{"result": {"isEol", "eolFrom", "isMaintained"}}``).
An API that does not answer or answers something else is logged, and the table
answers instead; a 404 means the API does not know the release.

Releases are named as endoflife.date names them: Debian and the Enterprise Linux
family by major version, Ubuntu ``YY.MM``, Alpine ``X.Y``, Amazon Linux ``2``/``2023``,
Fedora its number, Azure Linux and CBL-Mariner their major. Wolfi is rolling and
never ends. A release the table does not list is not reported as end of life.
"""

from __future__ import annotations

import datetime
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://endoflife.date/api/v1/products"
_MAX_ANSWER = 1 << 20

# os-release IDs and scanner family names -> endoflife.date product.
_PRODUCTS = {
    "debian": "debian", "ubuntu": "ubuntu", "alpine": "alpine-linux",
    "wolfi": "wolfi", "chainguard": "wolfi",
    "rhel": "rhel", "redhat": "rhel", "red hat": "rhel",
    "rocky": "rocky-linux", "rockylinux": "rocky-linux",
    "almalinux": "almalinux", "alma": "almalinux",
    "ol": "oracle-linux", "oracle": "oracle-linux", "oraclelinux": "oracle-linux",
    "amzn": "amazon-linux", "amazon": "amazon-linux", "amazonlinux": "amazon-linux",
    "fedora": "fedora",
    "azurelinux": "azure-linux", "azure-linux": "azure-linux",
    "mariner": "cbl-mariner", "cbl-mariner": "cbl-mariner",
    "centos": "centos",
    "sles": "sles", "suse linux enterprise server": "sles",
    "opensuse-leap": "opensuse", "opensuse.leap": "opensuse", "opensuse leap": "opensuse",
    "opensuse-tumbleweed": "opensuse-tumbleweed",
}
_DEBIAN_CODENAMES = {"wheezy": "7", "jessie": "8", "stretch": "9", "buster": "10",
                     "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}


@dataclass(frozen=True)
class EolStatus:
    """What is known about one release's end of life.

    ``eol``: the date regular security support ends (``None``: not known or never);
    ``is_eol``: that date has passed on ``today``; ``source``: ``table`` or the API URL.
    """

    family: str
    version: str
    product: str
    release: str
    eol: datetime.date | None
    is_eol: bool
    extended: datetime.date | None = None
    source: str = "table"

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "release": self.release,
                "eol": self.eol.isoformat() if self.eol else None, "isEol": self.is_eol,
                "extendedSupport": self.extended.isoformat() if self.extended else None,
                "source": self.source}

    def warning(self) -> str:
        when = f" on {self.eol.isoformat()}" if self.eol else ""
        extra = (f"; extended support until {self.extended.isoformat()}"
                 if self.extended else "")
        return (f"{self.family} {self.version} reached its end of life{when}{extra}: its "
                "repositories may get no more fixes")


def release_of(family: str, version: str) -> tuple[str, str] | None:
    """The endoflife.date ``(product, release)`` for an OS, or ``None`` when unknown."""
    key = " ".join(family.strip().lower().split())
    product = _PRODUCTS.get(key)
    if product is None:
        return None
    v = version.strip().lower()
    if product in ("wolfi", "opensuse-tumbleweed"):
        return product, "rolling"
    if product == "debian":
        v = _DEBIAN_CODENAMES.get(v, v)
    if not v:
        return None
    parts = v.split(".")
    if product in ("ubuntu", "alpine-linux", "sles", "opensuse"):  # service packs count
        return product, ".".join(parts[:2]).removesuffix(" lts")
    if product == "amazon-linux":
        return product, parts[0]
    return product, parts[0]


@cache
def load_table() -> dict[str, Any]:
    """The offline table (``suture/data/eol.json``), parsed once."""
    text = resources.files("suture").joinpath("data/eol.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def _date(text: object) -> datetime.date | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.date.fromisoformat(text[:10])
    except ValueError:
        return None


def _from_table(family: str, version: str, product: str, release: str,
                today: datetime.date) -> EolStatus | None:
    entry = load_table()["products"].get(product, {}).get(release)
    if entry is None:
        return None
    eol = _date(entry.get("eol"))
    return EolStatus(family, version, product, release, eol,
                     eol is not None and eol <= today, _date(entry.get("extended")))


def _from_api(family: str, version: str, product: str, release: str, api_url: str,
              today: datetime.date, timeout: float) -> EolStatus | None:
    """The API's answer; ``None`` when it does not know the release (404). Raises
    ``OSError``/``ValueError`` when it cannot be asked or answers nonsense."""
    base = api_url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise ValueError("not an http(s) URL")
    url = (f"{base}/{urllib.parse.quote(product, safe='')}/releases/"
           f"{urllib.parse.quote(release, safe='')}")
    request = urllib.request.Request(url, headers={"User-Agent": "suture",
                                                   "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read(_MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    if len(raw) > _MAX_ANSWER:
        raise ValueError("answer too large")
    doc = json.loads(raw)
    result = doc.get("result") if isinstance(doc, dict) else None
    if not isinstance(result, dict) or not isinstance(result.get("isEol"), bool):
        raise ValueError("no result.isEol in the answer")
    maintained = result.get("isMaintained")
    is_eol = result["isEol"] or maintained is False
    eol = _date(result.get("eolFrom"))
    extended = _date(result.get("eoesFrom"))
    return EolStatus(family, version, product, release, eol, is_eol, extended, base)


def check_eol(family: str | None, version: str | None, *, api_url: str | None = None,
              today: datetime.date | None = None, timeout: float = 10.0
              ) -> EolStatus | None:
    """The end-of-life status of ``family`` ``version``, or ``None`` when neither the
    API (if given) nor the table knows the release."""
    if not family or version is None:
        return None
    found = release_of(family, version)
    if found is None:
        return None
    product, release = found
    today = today or datetime.datetime.now(datetime.UTC).date()
    if api_url:
        try:
            return _from_api(family, version, product, release, api_url, today, timeout)
        except (OSError, ValueError) as exc:
            log.warning("end-of-life API %s: %s; using suture's table", api_url, exc)
    return _from_table(family, version, product, release, today)


def fetch_table(api_url: str, products: list[str], *, retrieved: datetime.date,
                timeout: float = 30.0) -> dict[str, Any]:
    """A new table (``data/eol.json``'s shape) from an endoflife.date-compatible API's
    ``GET {api_url}/{product}`` (``result.releases[]`` with ``name``, ``eolFrom``,
    ``eoesFrom``) for each of ``products``. Raises ``OSError``/``ValueError``."""
    base = api_url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise ValueError("not an http(s) URL")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for product in products:
        url = f"{base}/{urllib.parse.quote(product, safe='')}"
        request = urllib.request.Request(url, headers={"User-Agent": "suture",
                                                       "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read(_MAX_ANSWER + 1)
        if len(raw) > _MAX_ANSWER:
            raise ValueError(f"{url}: answer too large")
        doc = json.loads(raw)
        result = doc.get("result") if isinstance(doc, dict) else None
        releases = result.get("releases") if isinstance(result, dict) else None
        if not isinstance(releases, list):
            raise ValueError(f"{url}: no result.releases list")
        table: dict[str, dict[str, Any]] = {}
        for release in releases:
            if not isinstance(release, dict) or not isinstance(release.get("name"), str):
                raise ValueError(f"{url}: a release without a name")
            entry: dict[str, Any] = {"eol": release.get("eolFrom")}
            if release.get("eoesFrom"):
                entry["extended"] = release["eoesFrom"]
            table[release["name"]] = entry
        out[product] = table
    old = load_table()
    return {"source": old["source"], "retrieved": retrieved.isoformat(),
            "how": f"Fetched from {base} by scripts/update-eol.",
            "meaning": old["meaning"], "products": out}
