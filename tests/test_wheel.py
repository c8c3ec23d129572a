"""The wheel built from the repository installs one top-level import package, glimpse, holding every module.

glimpse must sit beside other packages with generic names (the PyPI metrics library ``evaluate``, say): the stage
folders are reached through glimpse/'s symbolic links to them, and a package missing from pyproject.toml's list
would be left out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: repository folder -> where its modules go in the wheel
MAPPED = {"glimpse": "glimpse", "extract": "glimpse/extract", "store": "glimpse/store", "train": "glimpse/train",
          "evaluate": "glimpse/evaluate"}


def test_the_wheel_holds_one_top_level_package_with_every_module(tmp_path):
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "pyproject.toml",
                             "README.md", *MAPPED], cwd=REPO, capture_output=True, text=True, check=True)
    source = tmp_path / "src"  # a copy: building in the repository would leave build/ and egg-info behind
    for name in listed.stdout.split():
        if (REPO / name).is_symlink():  # glimpse/store -> ../store: copied as the link it is
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).symlink_to((REPO / name).readlink())
        elif (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "out")], cwd=source, capture_output=True, text=True, check=True, timeout=300)
    wheel = next((tmp_path / "out").glob("glimpse-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"glimpse"}, sorted(top)
    modules = [name for name in listed.stdout.split() if name.endswith(".py")]
    expected = {MAPPED[m.split("/")[0]] + m[len(m.split("/")[0]):] for m in modules}
    assert expected <= set(names), sorted(expected - set(names))
