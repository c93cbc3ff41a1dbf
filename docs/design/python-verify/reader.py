"""Prototype of leaktracer's userspace side: read a CPython thread's frame chain
from /proc/PID/mem, emulating what the eBPF side would read.
usage: reader.py PID TID FS_BASE"""
import sys, struct, subprocess, re, json, os

PROFILES = {
    # tstate_frame: off of cframe (3.11/3.12) or current_frame (3.13)
    (3, 11): dict(rt_interp_head=40, rt_tsskey=596, is_threads_head=16, ts_next=8,
                  ts_native_tid=160, ts_thread_id=152, ts_cframe=56, cf_current=8, ts_current=None,
                  fr_code=32, fr_prev=48, fr_instr=56, fr_owner=69, fr_is_entry=68,
                  co_filename=112, co_name=120, co_qualname=128, co_linetable=136,
                  co_firstlineno=72, co_code=184, ascii_hdr=48, rt_obj_alloc=None),
    (3, 12): dict(rt_interp_head=40, rt_tsskey=1548, is_threads_head=72, ts_next=8,
                  ts_native_tid=144, ts_thread_id=136, ts_cframe=56, cf_current=0, ts_current=None,
                  fr_code=0, fr_prev=8, fr_instr=56, fr_owner=70, fr_is_entry=None,
                  co_filename=112, co_name=120, co_qualname=128, co_linetable=136,
                  co_firstlineno=68, co_code=192, ascii_hdr=40, rt_obj_alloc=176),
    (3, 13): dict(rt_interp_head=632, rt_tsskey=2164, is_threads_head=7344, ts_next=8,
                  ts_native_tid=160, ts_thread_id=152, ts_cframe=None, cf_current=None, ts_current=72,
                  fr_code=0, fr_prev=8, fr_instr=56, fr_owner=70, fr_is_entry=None,
                  co_filename=112, co_name=120, co_qualname=128, co_linetable=136,
                  co_firstlineno=68, co_code=200, ascii_hdr=40, rt_obj_alloc=784),
}

pid, tid, fs_base = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3], 0)
mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
def rd(addr, n):
    mem.seek(addr); return mem.read(n)
u64 = lambda a: struct.unpack("<Q", rd(a, 8))[0]
u32 = lambda a: struct.unpack("<I", rd(a, 4))[0]
i32 = lambda a: struct.unpack("<i", rd(a, 4))[0]
u8 = lambda a: rd(a, 1)[0]

# 1. find the module holding _PyRuntime: libpython if mapped, else the executable
maps = [l.split() for l in open(f"/proc/{pid}/maps")]
path = next((m[5] for m in maps if len(m) > 5 and re.search(r"libpython3\.\d+\.so", m[5])), None) \
       or os.readlink(f"/proc/{pid}/exe")
first = next(m for m in maps if len(m) > 5 and m[5] == path and int(m[2], 16) == 0)
etype = subprocess.run(["readelf", "-h", path], capture_output=True, text=True).stdout
bias = 0 if "EXEC (Executable" in etype else int(first[0].split("-")[0], 16)
syms = {}
for l in subprocess.run(["readelf", "-W", "--dyn-syms", path], capture_output=True, text=True).stdout.splitlines():
    p = l.split()
    if len(p) >= 8 and p[7] in ("_PyRuntime", "Py_Version", "PyCode_Type", "_Py_NoneStruct", "PyUnicode_Type"):
        syms[p[7]] = int(p[1], 16) + bias
ver = u32(syms["Py_Version"])
major, minor, micro = ver >> 24, (ver >> 16) & 0xff, (ver >> 8) & 0xff
P = PROFILES[(major, minor)]
RT = syms["_PyRuntime"]
print(f"module {path} bias {bias:#x} Py_Version {ver:#x} = {major}.{minor}.{micro}  _PyRuntime {RT:#x}")

# 3.13: cross-check profile against _Py_DebugOffsets
if (major, minor) >= (3, 13):
    d = rd(RT, 584)
    assert d[:8] == b"xdebugpy", d[:8]
    q = lambda o: struct.unpack_from("<Q", d, o)[0]
    chk = dict(rt_interp_head=q(40), is_threads_head=q(72), ts_next=q(168), ts_current=q(184),
               ts_thread_id=q(192), ts_native_tid=q(200), fr_prev=q(232), fr_code=q(240),
               fr_instr=q(248), fr_owner=q(264), co_filename=q(280), co_name=q(288),
               co_qualname=q(296), co_linetable=q(304), co_firstlineno=q(312), co_code=q(344),
               ascii_hdr=q(560))
    bad = {k: (v, P[k]) for k, v in chk.items() if P[k] != v}
    print("debug_offsets version %#x; mismatches vs profile: %s" % (q(8), bad or "none"))

# PyCode_Type.tp_members cross-check (works on stripped binaries)
members = u64(syms["PyCode_Type"] + 240)
found = {}
while True:
    nameptr = u64(members)
    if not nameptr: break
    name = rd(nameptr, 32).split(b"\0")[0].decode()
    found[name] = u64(members + 16)
    members += 40
cmp = {k: (found.get(k), P[k]) for k in ("co_filename", "co_name", "co_qualname", "co_linetable", "co_firstlineno")}
print("tp_members vs profile:", {k: ("ok" if a == b else f"MISMATCH {a}!={b}") for k, (a, b) in cmp.items()})

def pystr(o):
    # compact ASCII (or compact latin1/UCS2/UCS4) PyUnicodeObject
    state = u32(o + 32)
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    n = u64(o + 16)
    if not compact: return "<non-compact str>"
    if ascii_:
        return rd(o + P["ascii_hdr"], n).decode("ascii")
    data = o + P["ascii_hdr"] + 16  # PyCompactUnicodeObject: + utf8_length + utf8 (3.12+); 3.11 adds wstr_length
    if (major, minor) == (3, 11): data += 8
    raw = rd(data, n * kind)
    return raw.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind])

def pybytes(o):
    n = u64(o + 16); return rd(o + 32, n)

def varint(b, i):
    v = b[i] & 63; s = 6
    while b[i] & 64:
        i += 1; v |= (b[i] & 63) << s; s += 6
    return v, i + 1

def svarint(b, i):
    v, i = varint(b, i)
    return (-(v >> 1) if v & 1 else v >> 1), i

def addr2line(table, firstlineno, addr):
    """addr = byte offset of the instruction in co_code_adaptive (like PyCode_Addr2Line)."""
    if addr < 0: return firstlineno
    line, start, i = firstlineno, 0, 0
    while i < len(table):
        b = table[i]; code = (b >> 3) & 15; end = start + ((b & 7) + 1) * 2
        i += 1
        if code == 15: delta, ent = 0, None
        elif code == 14:
            delta, i = svarint(table, i); _, i = varint(table, i); _, i = varint(table, i); _, i = varint(table, i)
            ent = 1
        elif code == 13: delta, i = svarint(table, i); ent = 1
        elif code >= 10: delta = code - 10; i += 2; ent = 1
        else: delta = 0; i += 1; ent = 1
        line += delta
        if start <= addr < end:
            return line if ent else None
        start = end
    return None

# 2. thread state: via autoTSSkey pthread key (glibc TSD), and via the list walk
key = u32(RT + P["rt_tsskey"])
assert key < 32, key
ts_tsd = u64(fs_base + 0x310 + key * 16 + 8)
interp = u64(RT + P["rt_interp_head"])
ts_walk, t = None, u64(interp + P["is_threads_head"])
while t:
    if u64(t + P["ts_native_tid"]) == tid: ts_walk = t
    t = u64(t + P["ts_next"])
pthread_self = u64(fs_base + 0x10)
print(f"autoTSSkey={key} tstate(TSD)={ts_tsd:#x} tstate(list walk)={ts_walk:#x} "
      f"thread_id==pthread_self: {u64(ts_tsd + P['ts_thread_id']) == pthread_self}")
ts = ts_tsd

# allocator table (3.12+ inside _PyRuntime)
if P["rt_obj_alloc"] is not None:
    print("allocators.standard.obj = ctx %#x malloc %#x calloc %#x realloc %#x free %#x" %
          tuple(u64(RT + P["rt_obj_alloc"] + 8 * k) for k in range(5)), f"(bias {bias:#x})")

# 3. frame chain
if P["ts_current"] is not None:
    f = u64(ts + P["ts_current"])
else:
    f = u64(u64(ts + P["ts_cframe"]) + P["cf_current"])
none_addr, code_type = syms["_Py_NoneStruct"], syms["PyCode_Type"]
out = []
while f:
    code = u64(f + P["fr_code"]); owner = u8(f + P["fr_owner"])
    instr = u64(f + P["fr_instr"])
    entry = u8(f + P["fr_is_entry"]) if P["fr_is_entry"] is not None else None
    is_code = code and u64(code + 8) == code_type
    if owner == 3 or not is_code:
        desc = "<none>" if code == none_addr else (pystr(u64(code + P["co_qualname"])) if is_code else f"{code:#x}")
        print(f"  [frame {f:#x} owner={owner} CSTACK shim, f_code/f_executable={desc}]")
        f = u64(f + P["fr_prev"]); continue
    off = instr - (code + P["co_code"])
    qual = pystr(u64(code + P["co_qualname"])); fn = pystr(u64(code + P["co_filename"]))
    line = addr2line(pybytes(u64(code + P["co_linetable"])), i32(code + P["co_firstlineno"]), off)
    print(f"  {qual} ({os.path.basename(fn)}:{line}) code={code:#x} off={off} owner={owner}" + (f" is_entry={entry}" if entry is not None else ""))
    out.append((pystr(u64(code + P["co_name"])), fn, line))
    f = u64(f + P["fr_prev"])
json.dump(out, open(f"/work/notes/python-verify/read.{pid}.{tid}.json", "w"))
