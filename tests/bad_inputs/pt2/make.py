"""Regenerate the hostile .pt2 archives of this folder from a genuine export (run by hand;
the archives are the corpus). Each one tries to run code when loaded: it would create the
file MARKER_pt2_code_ran in the current folder. torch.export.load on expr_injection.pt2 does
create it; convcost must refuse every archive here before any of it runs.

    python tests/bad_inputs/pt2/make.py [FOLDER]

(tests/test_hardening.py also regenerates them into a temporary folder, so the generator keeps
working with newer torch releases.)
"""

from __future__ import annotations

import json
import sys
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


def rewrite(src: Path, dst: Path, edit=None, extra=None, members=None) -> None:
    """Copy ``src`` to ``dst``: ``edit`` changes models/model.json (a dict), ``members`` maps a
    member's name suffix to a function of its bytes, ``extra`` adds members."""
    zin = zipfile.ZipFile(src)
    with zipfile.ZipFile(dst, "w") as zout:
        for i in zin.infolist():
            data = zin.read(i)
            if i.filename.endswith("models/model.json") and edit:
                doc = json.loads(data)
                edit(doc)
                data = json.dumps(doc).encode()
            for suffix, fn in (members or {}).items():
                if i.filename.endswith(suffix):
                    data = fn(data)
            zout.writestr(i, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


def patch_bytes(src: Path, dst: Path, fn) -> None:
    """``dst`` = ``fn(bytes of src)``: damage below the zip library (CRC, flags, methods)."""
    dst.write_bytes(fn(bytearray(src.read_bytes())))


def _headers(data: bytearray, member: str):
    """Offsets of a member's local header and central directory entry."""
    name = member.encode()
    local = next(i for i in range(len(data)) if data.startswith(b"PK\x03\x04", i)
                 and data[i + 30:i + 30 + len(name)] == name)
    central = next(i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)
                   and data[i + 46:i + 46 + len(name)] == name)
    return local, central


def _set_flag(member: str, bit: int):
    def fn(data: bytearray) -> bytes:
        local, central = _headers(data, member)
        data[local + 6] |= bit
        data[central + 8] |= bit
        return bytes(data)
    return fn


def _set_method(member: str, method: int):
    def fn(data: bytearray) -> bytes:
        local, central = _headers(data, member)
        data[local + 8:local + 10] = method.to_bytes(2, "little")
        data[central + 10:central + 12] = method.to_bytes(2, "little")
        return bytes(data)
    return fn


def _flip_data_byte(member: str):
    def fn(data: bytearray) -> bytes:
        local, _ = _headers(data, member)
        n = int.from_bytes(data[local + 26:local + 28], "little")
        m = int.from_bytes(data[local + 28:local + 30], "little")
        data[local + 30 + n + m] ^= 0xFF  # the first byte of the stored data
        return bytes(data)
    return fn


def main(out: Path = HERE) -> None:
    global HERE
    HERE = Path(out)
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

    evil = f'c.b"+str(getattr(__import__("os"),"system")("touch {MARKER}"))+"'

    def name(doc):  # a parameter's name reaches FX's generated getattr(self, "<name>")
        s = json.dumps(doc).replace('"c.bias"', json.dumps(evil))
        s = s.replace('L__self__,,__main__.Net;L__self__c,c,torch.nn.modules.conv.Conv2d',
                      'L__self__,,__main__.Net')
        doc.clear()
        doc.update(json.loads(s))

    def weights_config(data: bytes) -> bytes:
        return data.replace(b'"c.bias"', json.dumps(evil).encode())

    def power_tower(doc):  # sympy would never finish 10 ** 10 ** 9
        s = json.dumps(doc).replace('"expr_str": "Symbol(',
                                    '"expr_str": "Pow(Integer(10), Pow(Integer(10), Integer(9)))'
                                    ' + Symbol(')
        doc.clear()
        doc.update(json.loads(s))

    def claim_16g(data: bytes) -> bytes:  # weight_0 claims 2048x1024x1024 floats, stores none
        cfg = json.loads(data)
        meta = cfg["config"]["c.weight"]["tensor_meta"]
        meta["sizes"] = [{"as_int": n} for n in (2048, 1024, 1024)]
        meta["strides"] = [{"as_int": n} for n in (1024 * 1024, 1024, 1)]
        return json.dumps(cfg).encode()

    def stack_cr(doc):  # a carriage return ends FX's stack-trace comment in generated code
        node = doc["graph_module"]["graph"]["nodes"][0]
        node["metadata"]["stack_trace"] = (f'File "x.py", line 1, in f\rimport os; '
                                          f'os.system("touch {MARKER}")\n    y = 1')

    def big_int(doc):
        doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][1] = {"as_int": 10**30}

    rewrite(src, HERE / "name_injection.pt2", name,
            members={"model_weights_config.json": weights_config})
    rewrite(src, HERE / "expr_power_tower.pt2", power_tower)
    rewrite(src, HERE / "zero_byte_weight_16g.pt2", members={
        "model_weights_config.json": claim_16g, "data/weights/weight_0": lambda d: b""})
    rewrite(src, HERE / "stack_trace_cr.pt2", stack_cr)
    rewrite(src, HERE / "int_beyond_int64.pt2", big_int)
    rewrite(src, HERE / "deep_json.pt2", members={
        "models/model.json": lambda d: b"[" * 100_000 + b"]" * 100_000})
    patch_bytes(src, HERE / "bad_crc.pt2", _flip_data_byte(f"{top}/data/weights/weight_0"))
    patch_bytes(src, HERE / "encrypted_member.pt2", _set_flag(f"{top}/byteorder", 0x1))
    patch_bytes(src, HERE / "unknown_compression.pt2",
                _set_method(f"{top}/byteorder", 99))
    rewrite(src, HERE / "expr_injection.pt2", expr)
    rewrite(src, HERE / "guard_injection.pt2", guard)
    rewrite(src, HERE / "target_torch_save.pt2", target)
    rewrite(src, HERE / "range_key_injection.pt2", range_key)
    rewrite(src, HERE / "aoti_payload.pt2",
            extra={f"{top}/data/aotinductor/model/model.so": b"\x7fELF"})
    rewrite(src, HERE / "dotdot_member.pt2", extra={f"{top}/../escape.txt": b"x"})
    (HERE / "not_a_zip.pt2").write_bytes(b"PK\x03\x04 this is not really a zip")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
