"""Regenerate the hostile .pt2 archives of this folder from a genuine export (run by hand;
the archives are the corpus). Each one tries to run code when loaded: it would create the
file MARKER_pt2_code_ran in the current folder. torch.export.load on expr_injection.pt2 does
create it; convcost must refuse every archive here before any of it runs.

    python tests/bad_inputs/pt2/make.py
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MARKER = "MARKER_pt2_code_ran"
INJECT = f"__import__('os').system('touch {MARKER}') or "


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.c(x)


def rewrite(src: Path, dst: Path, edit=None, extra=None) -> None:
    zin = zipfile.ZipFile(src)
    with zipfile.ZipFile(dst, "w") as zout:
        for i in zin.infolist():
            data = zin.read(i)
            if i.filename.endswith("models/model.json") and edit:
                doc = json.loads(data)
                edit(doc)
                data = json.dumps(doc).encode()
            zout.writestr(i, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


def main() -> None:
    b = torch.export.Dim("b", min=1, max=64)
    ep = torch.export.export(Net(), (torch.randn(2, 3, 8, 8),), dynamic_shapes={"x": {0: b}})
    src = HERE / "genuine.pt2"
    torch.export.save(ep, src)
    top = zipfile.ZipFile(src).namelist()[0].split("/")[0]

    def expr(doc):
        s = json.dumps(doc).replace('"expr_str": "Symbol(', f'"expr_str": "{INJECT}Symbol(')
        doc.clear()
        doc.update(json.loads(s))

    def guard(doc):
        doc["guards_code"] = [f"__import__('os').system('touch {MARKER}') == 0"]

    def target(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.save"

    def range_key(doc):
        doc["range_constraints"] = {f"{INJECT}s0": {"min_val": 1, "max_val": 64}}

    rewrite(src, HERE / "expr_injection.pt2", expr)
    rewrite(src, HERE / "guard_injection.pt2", guard)
    rewrite(src, HERE / "target_torch_save.pt2", target)
    rewrite(src, HERE / "range_key_injection.pt2", range_key)
    rewrite(src, HERE / "aoti_payload.pt2",
            extra={f"{top}/data/aotinductor/model/model.so": b"\x7fELF"})
    rewrite(src, HERE / "dotdot_member.pt2", extra={f"{top}/../escape.txt": b"x"})
    (HERE / "not_a_zip.pt2").write_bytes(b"PK\x03\x04 this is not really a zip")


if __name__ == "__main__":
    main()
