import os, struct, sys, time, ctypes
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bpfcheck.py')).read().split('# 1. raw')[0])
def run_cnt(fd):
    info = ctypes.create_string_buffer(256)
    a = bytearray(16); struct.pack_into('<IIQ', a, 0, fd, 256, ctypes.addressof(info))
    r, e = bpf(15, a); return struct.unpack_from('<Q', info.raw, 200)[0] if r == 0 else ('err', E(e))
stats, e = bpf(32, struct.pack('<I', 0)); print('BPF_ENABLE_STATS ->', stats, E(e))
target, other = int(sys.argv[1]), int(sys.argv[2]); path = b'/usr/lib/x86_64-linux-gnu/libc.so.6'
m1, _ = prog_load(2, 48, name=b'multi_target'); m2, _ = prog_load(2, 48, name=b'multi_ret')
l1, e1 = link_uprobe_multi(m1, path, [0x98930, 0x98ef3], target)            # malloc, free (+test)
l2, e2 = link_uprobe_multi(m2, path, [0x98930], target, flags=1)            # malloc return
print('links', l1, E(e1), l2, E(e2)); time.sleep(2)
print('after 2 s: entry program runs', run_cnt(m1), ', return program runs', run_cnt(m2))
