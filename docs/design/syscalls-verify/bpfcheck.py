import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
NR_bpf = 321
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), 256)
    r = libc.syscall(NR_bpf, cmd, buf, 256)
    return r, (ctypes.get_errno() if r < 0 else 0)
INSNS = bytes.fromhex('b700000000000000' '9500000000000000')  # r0 = 0; exit
insns = ctypes.create_string_buffer(INSNS, len(INSNS)); lic = ctypes.create_string_buffer(b'GPL')
def prog_load(ptype, eat=0, btf_id=0, name=b'chk'):
    a = bytearray(128)
    struct.pack_into('<IIQQ', a, 0, ptype, 2, ctypes.addressof(insns), ctypes.addressof(lic))
    a[48:48+len(name)] = name
    struct.pack_into('<I', a, 68, eat); struct.pack_into('<I', a, 108, btf_id)
    return bpf(5, a)
def raw_tp_open(name, fd):
    n = ctypes.create_string_buffer(name) if name else None
    a = bytearray(32); struct.pack_into('<QI', a, 0, ctypes.addressof(n) if n else 0, fd)
    return bpf(17, a)
def link_uprobe_multi(fd, path, offsets, pid, flags=0):
    p = ctypes.create_string_buffer(path); offs = (ctypes.c_uint64 * len(offsets))(*offsets)
    a = bytearray(64); struct.pack_into('<IIII', a, 0, fd, 0, 48, 0)
    struct.pack_into('<QQQQIII', a, 16, ctypes.addressof(p), ctypes.addressof(offs), 0, 0, len(offsets), flags, pid)
    return bpf(28, a)
E = lambda e: os.strerror(e) if e else 'ok'
# 1. raw tracepoints by name, no tracefs
fd, e = prog_load(17); print('raw_tp prog load:', fd, E(e))
for tp in [b'sys_enter', b'sys_exit', b'mark_victim', b'sched_process_exit', b'sys_enter_mmap']:
    l, e = raw_tp_open(tp, fd); print('  BPF_RAW_TRACEPOINT_OPEN', tp.decode(), '->', l, E(e)); l >= 0 and os.close(l)
# 2. tp_btf on sys_enter (attach_btf_id from vmlinux BTF: typedef btf_trace_sys_enter)
if len(sys.argv) > 1:
    bid = int(sys.argv[1]); fd2, e = prog_load(26, 23, bid); print('tp_btf(sys_enter) load, btf id', bid, '->', fd2, E(e))
    if fd2 >= 0:
        l, e = raw_tp_open(None, fd2); print('  attach (raw_tracepoint_open, name NULL) ->', l, E(e)); l >= 0 and os.close(l)
# 3. uprobe_multi
pid = int(sys.argv[2]); path = b'/usr/lib/x86_64-linux-gnu/libc.so.6'
ent = [0x1019a0,0x101a00,0x1099d0,0x98930,0x98ef3,0x99130,0x99610,0x99650,0x99680,0x996e0,0x9a280,0x9a7e0]
ret = [0x1019a0,0x1099d0,0x98930,0x99130,0x99610,0x99650,0x99680,0x996e0,0x9a280,0x9a7e0]
plain, e = prog_load(2, 0); print('kprobe-type prog without expected_attach_type:', plain, E(e))
l, e = link_uprobe_multi(plain, path, ent, pid); print('  uprobe_multi link_create ->', l, E(e)); l >= 0 and os.close(l)
multi, e = prog_load(2, 48); print('kprobe-type prog, expected_attach_type=BPF_TRACE_UPROBE_MULTI:', multi, E(e))
for rnd in range(2):
    t0 = time.perf_counter(); l1, e1 = link_uprobe_multi(multi, path, ent, pid)
    t1 = time.perf_counter(); l2, e2 = link_uprobe_multi(multi, path, ret, pid, flags=1)
    t2 = time.perf_counter()
    print('  round %d: entry link (%d offsets) -> %d %s in %.2f ms; return link (%d offsets, BPF_F_UPROBE_MULTI_RETURN) -> %d %s in %.2f ms' % (rnd, len(ent), l1, E(e1), (t1-t0)*1e3, len(ret), l2, E(e2), (t2-t1)*1e3))
    maps = open('/proc/%d/maps' % pid).read()
    t3 = time.perf_counter(); l1 >= 0 and os.close(l1); t4 = time.perf_counter(); l2 >= 0 and os.close(l2); t5 = time.perf_counter()
    print('  round %d: close entry link %.1f ms, close return link %.1f ms' % (rnd, (t4-t3)*1e3, (t5-t4)*1e3))
