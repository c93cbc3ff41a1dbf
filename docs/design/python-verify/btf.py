import struct
d = open('/sys/kernel/btf/vmlinux','rb').read()
magic, ver, flags, hlen, toff, tlen, soff, slen = struct.unpack_from('<HBBIIIII', d, 0)
types = d[hlen+toff: hlen+toff+tlen]; strs = d[hlen+soff: hlen+soff+slen]
name = lambda o: strs[o:strs.index(b'\0', o)].decode()
i = 0; tid = 1; T = {}
extra = {1:4,2:0,3:12,7:0,8:0,9:0,10:0,11:0,12:0,14:4,16:0,17:4,18:0}
while i < len(types):
    no, info, sz = struct.unpack_from('<III', types, i); i += 12
    kind, vlen, kflag = (info>>24)&0x1f, info&0xffff, info>>31
    mem = []
    if kind in (4,5):
        for k in range(vlen):
            mn, mt, mo = struct.unpack_from('<III', types, i+12*k)
            mem.append((name(mn), mt, (mo & 0xffffff) if kflag else mo))
        i += 12*vlen
    elif kind in (6,13): i += 8*vlen
    elif kind in (15,19): i += 12*vlen
    else: i += extra[kind]
    T[tid] = (kind, name(no), sz, mem); tid += 1
def find(n): return [t for t,(k,nm,s,m) in T.items() if k==4 and nm==n and m][0]
ts = T[find('task_struct')]; th = T[find('thread_struct')]
o1 = [m for m in ts[3] if m[0]=='thread'][0][2]//8
o2 = [m for m in th[3] if m[0]=='fsbase'][0][2]//8
print("task_struct.thread", o1, "thread_struct.fsbase", o2, "total", o1+o2, hex(o1+o2))
