"""Editing a video's file in place, as a damaged disk or a hand edit would: what store tests corrupt."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

from glimpse.store.video_files import video_path


def edit_entry(store: str | Path, key: str, name: str, change: Callable[[bytes], bytes | None]) -> None:
    """Rewrite entry ``name`` of video ``key``'s file (zip) to ``change(its bytes)``; None removes the entry
    (a name that is a folder, ``rgb/``, removes every entry under it). The other entries keep their bytes and order.
    """
    path = Path(video_path(store, key))
    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    assert any(n == name or (name.endswith("/") and n.startswith(name)) for n, _ in entries), (name, entries[:3])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for entry, data in entries:
            if name.endswith("/") and entry.startswith(name):
                continue
            changed = change(data) if entry == name else data
            if changed is not None:
                z.writestr(entry, changed)
