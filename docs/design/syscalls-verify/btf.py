import struct, sys
d = open('/sys/kernel/btf/vmlinux','rb').read()
magic, ver, flags, hlen, toff, tlen, soff, slen = struct.unpack_from('<HBBIIIII', d, 0)
T = d[hlen+toff:hlen+toff+tlen]; S = d[hlen+soff:hlen+soff+slen]
def s(o): return S[o:S.index(b'\0', o)].decode()
types = [None]; at = 0
while at < len(T):
    no, info, sz = struct.unpack_from('<III', T, at); at += 12
    kind = (info>>24)&0x1f; vlen = info&0xffff; kf = info>>31
    extra = []
    if kind in (4,5):
        for i in range(vlen):
            mn, mt, mo = struct.unpack_from('<III', T, at+12*i); extra.append((s(mn), mt, (mo & 0xffffff) if kf else mo))
        at += 12*vlen
    elif kind == 13:
        for i in range(vlen):
            pn, pt = struct.unpack_from('<II', T, at+8*i); extra.append((s(pn), pt))
        at += 8*vlen
    elif kind in (1,14,17): at += 4
    elif kind == 3: extra = struct.unpack_from('<III', T, at); at += 12
    elif kind == 6: at += 8*vlen
    elif kind in (15,19): at += 12*vlen
    types.append((kind, s(no), sz, extra))
K = {1:'int',2:'ptr',3:'array',4:'struct',5:'union',6:'enum',7:'fwd',8:'typedef',9:'volatile',10:'const',11:'restrict',12:'func',13:'proto',14:'var',15:'datasec',16:'float',17:'tag',18:'typetag',19:'enum64'}
def tn(i, depth=0):
    if i == 0: return 'void'
    k, n, sz, ex = types[i]
    if k == 2: return tn(sz)+' *'
    if k in (9,10,11,18): return K[k]+' '+tn(sz)
    if k == 3: return tn(ex[0])+'[%d]' % ex[2]
    if k == 13: return 'fn(' + ', '.join(tn(t) for _, t in ex) + ')'
    return (K[k]+' ' if k in (4,5,6,7) else '') + (n or '<anon>')
def find(name, kinds):
    return [i for i,t in enumerate(types) if t and t[1]==name and t[0] in kinds]
for name in sys.argv[1:]:
    for i in find(name, (4,5,8)):
        k, n, sz, ex = types[i]
        if k == 8: print('typedef', n, '=', tn(sz)); continue
        print(K[k], n, 'size', sz)
        for mn, mt, mo in ex: print('   +%d %s %s' % (mo//8, tn(mt), mn))
