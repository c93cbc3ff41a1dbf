import sys, types, importlib
def varint(b, i):
    v = b[i] & 63; s = 6
    while b[i] & 64:
        i += 1; v |= (b[i] & 63) << s; s += 6
    return v, i + 1
def svarint(b, i):
    v, i = varint(b, i)
    return (-(v >> 1) if v & 1 else v >> 1), i
def addr2line(table, firstlineno, addr):
    if addr < 0: return firstlineno
    line, start, i = firstlineno, 0, 0
    while i < len(table):
        b = table[i]; code = (b >> 3) & 15; end = start + ((b & 7) + 1) * 2; i += 1
        if code == 15: delta, ok = 0, False
        elif code == 14:
            delta, i = svarint(table, i); _, i = varint(table, i); _, i = varint(table, i); _, i = varint(table, i); ok = True
        elif code == 13: delta, i = svarint(table, i); ok = True
        elif code >= 10: delta = code - 10; i += 2; ok = True
        else: delta = 0; i += 1; ok = True
        line += delta
        if start <= addr < end: return line if ok else None
        start = end
    return None
def codes(co):
    yield co
    for c in co.co_consts:
        if isinstance(c, types.CodeType): yield from codes(c)
mods = "json os re ast inspect typing asyncio.base_events email.message http.client argparse dataclasses enum pathlib collections functools threading unittest.case logging decimal".split()
n = bad = 0
for m in mods:
    mod = importlib.import_module(m)
    src = mod.__file__
    co = compile(open(src, encoding="utf-8").read(), src, "exec")
    for c in codes(co):
        exp = {}
        for s, e, l in c.co_lines():
            for a in range(s, e, 2): exp[a] = l
        for a in range(0, len(c.co_code), 2):
            n += 1
            if addr2line(c.co_linetable, c.co_firstlineno, a) != exp.get(a):
                bad += 1
print(sys.version.split()[0], "offsets checked", n, "mismatches", bad)
