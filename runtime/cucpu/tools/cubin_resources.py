#!/usr/bin/env python3
"""Stand-in for `cuobjdump --dump-resource-usage` (cuobjdump is not shipped in
this pip-wheel CUDA 13 install). Usage: cubin_resources.py file.cubin...
Reads a cubin (NVIDIA ELF) and prints per kernel: REG (EIATTR_REGCOUNT / .text sh_info>>24), STACK (EIATTR_FRAME_SIZE),
SHARED (size of .nv.shared.<k>), CONSTANT[0] (.nv.constant0.<k>), LOCAL
(EIATTR_MIN/MAX_STACK_SIZE), barriers (EIATTR 0x4c). Spill bytes are not in
the cubin: read them from `ptxas -v` (nvcc -Xptxas -v)."""
import struct, sys

EI = {0x2f: "REGCOUNT", 0x11: "FRAME_SIZE", 0x12: "MIN_STACK_SIZE",
      0x23: "MAX_STACK_SIZE"}

def parse(path):
    b = open(path, "rb").read()
    assert b[:4] == b"\x7fELF" and b[4] == 2, "need 64-bit ELF cubin"
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3a)
    secs = []
    for i in range(shnum):
        (name, typ, flags, addr, off, size, link, info, align,
         entsz) = struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize)
        secs.append(dict(name=name, type=typ, flags=flags, off=off, size=size,
                         link=link, info=info, entsize=entsz))
    strtab = secs[shstrndx]
    def sname(o):
        s = strtab["off"] + o
        return b[s:b.index(b"\0", s)].decode()
    for s in secs:
        s["n"] = sname(s["name"])
    # symbol table -> index -> name
    symtab = next(s for s in secs if s["type"] == 2)
    symstr = secs[symtab["link"]]
    syms = []
    for i in range(symtab["size"] // 24):
        st_name, = struct.unpack_from("<I", b, symtab["off"] + 24 * i)
        o = symstr["off"] + st_name
        syms.append(b[o:b.index(b"\0", o)].decode())
    attrs = {}  # kernel -> {attr: value}
    for s in secs:
        if not s["n"].startswith(".nv.info"):
            continue
        p, end = s["off"], s["off"] + s["size"]
        while p < end:
            fmt, code = b[p], b[p + 1]
            if fmt == 4:  # EIFMT_SVAL: u16 size + payload
                ln, = struct.unpack_from("<H", b, p + 2)
                if code in EI and ln == 8:
                    sym, val = struct.unpack_from("<II", b, p + 4)
                    attrs.setdefault(syms[sym], {})[EI[code]] = val
                p += 4 + ln
            else:  # EIFMT_NVAL/BVAL/HVAL: value in the 16-bit slot
                if s["n"].startswith(".nv.info.") and code == 0x4c:
                    attrs.setdefault(s["n"][9:], {})["BARRIERS"] = struct.unpack_from("<H", b, p + 2)[0]
                p += 4
    out = []
    for s in secs:
        if not s["n"].startswith(".text."):
            continue
        k = s["n"][6:]
        a = attrs.get(k, {})
        shared = sum(x["size"] for x in secs if x["n"] == ".nv.shared." + k)
        # sm_90+: the kernel's shared section also holds the 1 KiB that
        # .nv.shared.reserved.0 stands for; ptxas -v reports it without that.
        if shared and any(x["n"].startswith(".nv.shared.reserved") for x in secs):
            shared -= 1024
        cmem0 = sum(x["size"] for x in secs if x["n"] == ".nv.constant0." + k)
        out.append(dict(kernel=k, REG=a.get("REGCOUNT", s["info"] >> 24),
                        REG_from_shinfo=s["info"] >> 24,
                        STACK=a.get("FRAME_SIZE", 0), SHARED=shared,
                        LOCAL=a.get("MAX_STACK_SIZE", a.get("MIN_STACK_SIZE", 0)),
                        CONSTANT0=cmem0, BARRIERS=a.get("BARRIERS", 0),
                        TEXT_BYTES=s["size"]))
    return out

if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"Resource usage ({path}):")
        for r in parse(path):
            print(f" Function {r['kernel']}:")
            print("  REG:{REG} STACK:{STACK} SHARED:{SHARED} LOCAL:{LOCAL} "
                  "CONSTANT[0]:{CONSTANT0} BARRIERS:{BARRIERS} TEXT:{TEXT_BYTES}B".format(**r))
