"""apko, an independent apk installer built from source (``scripts/peers``), installs the
package set that suture's patch leaves, from the same signed repository on 127.0.0.1:
its installed database must agree with the one suture wrote, package by package.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from suture.oci.fs import read_files
from suture.oci.image import Image, ImageIndex
from suture.transports import open_artifact
from tests.fixtures.apkrepo import (
    ApkFile,
    ApkKeys,
    ApkRepoServer,
    ApkSpec,
    apk_image,
    build_apk,
    write_oci,
)
from tests.fixtures.patchimages import open_image, suture
from tests.fixtures.peers import peer

ALPINE_URL = "https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
MUSL1 = ApkSpec("musl", "1.2.5-r0", files={"lib/ld-musl-x86_64.so.1": ApkFile(b"m1\n", 0o755)},
                provides=["so:libc.musl-x86_64.so.1=1"])
MUSL2 = MUSL1.with_(version="1.2.5-r1",
                    files={"lib/ld-musl-x86_64.so.1": ApkFile(b"m2\n", 0o755)})
HELLO1 = ApkSpec("hello", "1.0-r0", files={"usr/bin/hello": ApkFile(b"h1\n", 0o755),
                                           "etc/hello.conf": b"a=1\n"},
                 depends=["so:libc.musl-x86_64.so.1"])
HELLO2 = HELLO1.with_(version="1.1-r0", files={"usr/bin/hello": ApkFile(b"h2\n", 0o755),
                                               "etc/hello.conf": b"a=2\n"},
                      depends=["so:libc.musl-x86_64.so.1", "so:libnew.so.1"])
LIBNEW = ApkSpec("libnew", "1.0-r0", files={"usr/lib/libnew.so.1": b"new\n"},
                 provides=["so:libnew.so.1=1"])
ZLIB = ApkSpec("zlib", "1.3.1-r0", files={"usr/lib/libz.so.1": b"z\n"},
               provides=["so:libz.so.1=1"])


Record = tuple[dict[str, str], list[str]]
#: The fields of a record that describe its files, in order (the rest are the package's).
FILE_FIELDS = ("F", "M", "R", "a", "Z")


def _records(image: Image) -> dict[str, Record]:
    """Package name -> its ``lib/apk/db/installed`` record, as what it says: the package
    fields (a dict), and the file lines in order with modes as numbers.

    apko (go-apk) writes the same content in another form than apk-tools: fields in
    another order, empty fields (``D:``, ``p:``), ``i:[]`` for no install_if, ``k:0``
    for the default provider priority, zero-padded modes; those are normalised away."""
    data = read_files(image, ["lib/apk/db/installed"])["lib/apk/db/installed"].data
    assert data is not None
    out = {}
    for record in data.decode().strip().split("\n\n"):
        fields: dict[str, str] = {}
        files: list[str] = []
        for line in record.splitlines():
            letter, value = line.split(":", 1)
            if letter in FILE_FIELDS:
                if letter in ("M", "a"):
                    uid, gid, mode = value.split(":")
                    value = f"{uid}:{gid}:{int(mode, 8):o}"
                files.append(f"{letter}:{value}")
            elif value not in ("", "[]") and (letter, value) != ("k", "0"):
                assert letter not in fields, line
                fields[letter] = value
        out[fields["P"]] = (fields, files)
    return out


def test_apko_installs_what_suture_wrote(tmp_path: Path, apk_repo_server: ApkRepoServer,
                                         apk_keys: ApkKeys) -> None:
    key = apk_keys.good
    apk_repo_server.publish([MUSL1, MUSL2, HELLO1, HELLO2, LIBNEW, ZLIB], key, path="main")
    v1 = [build_apk(p, key, tmp_path / "v1") for p in (MUSL1, HELLO1, ZLIB)]
    ref = write_oci(apk_image(v1, [ALPINE_URL], key), tmp_path / "layout", "v1")
    dest = f"oci:{tmp_path}/layout:patched"
    proc = suture("patch", "-i", ref, "--dest", dest,
                  "--mirror", f"{ALPINE_URL}={apk_repo_server.sub('main')}",
                  "--allow-private-repos", "127.0.0.1", "--sandbox", "none",
                  "--cache-dir", str(tmp_path / "cache"), "--progress", "quiet")
    assert proc.returncode == 0, proc.stderr
    ours = _records(open_image(dest))

    config = tmp_path / "apko.json"  # YAML is a superset of JSON
    config.write_text(json.dumps({
        "contents": {"repositories": [apk_repo_server.sub("main")],
                     "keyring": [str(key.public_path)],
                     "packages": ["hello", "musl", "zlib"]},
        "archs": ["x86_64"]}))
    out = tmp_path / "apko.tar"
    env = {**os.environ, "HOME": str(tmp_path)}
    run = subprocess.run([str(peer("apko")), "build", str(config), "suture.test/apko:latest",
                          str(out), "--arch", "x86_64", "--cache-dir", str(tmp_path / "apko")],
                         capture_output=True, text=True, env=env, timeout=600,
                         cwd=tmp_path)  # apko writes its SBOMs into the working directory
    assert run.returncode == 0, run.stdout + run.stderr
    built = open_artifact(f"docker-archive:{out}")
    if isinstance(built, ImageIndex):
        [desc] = built.image_descriptors()
        built = built.child(desc)
    assert isinstance(built, Image)
    theirs = _records(built)
    assert sorted(theirs) == sorted(ours) == ["hello", "libnew", "musl", "zlib"]
    for name in ours:
        assert ours[name] == theirs[name], name
    # and the files the records list are the same files in both images
    paths = []
    for _fields, files in ours.values():
        directory = ""
        for line in files:
            if line.startswith("F:"):
                directory = line[2:]
            elif line.startswith("R:"):
                paths.append(f"{directory}/{line[2:]}")
    mine, apko = read_files(open_image(dest), paths), read_files(built, paths)
    assert sorted(mine) == sorted(apko) == sorted(paths)
    for path in paths:
        assert (mine[path].data, mine[path].mode, mine[path].uid, mine[path].gid) == (
            apko[path].data, apko[path].mode, apko[path].uid, apko[path].gid), path
