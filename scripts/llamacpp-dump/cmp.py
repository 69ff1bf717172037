#!/usr/bin/env python3
"""Compares llama.cpp's tensors (./dump with DUMP_DIR) with ferrolm's (FERROLM_DUMP_DIR):
usage cmp.py LLAMA_DIR FERROLM_DIR NAME... (llama.cpp names, e.g. attn_norm-0 Qcur-0#2
kqv_out-3 result_output; "#k" picks the k-th tensor of that name in graph order, e.g. the
rotated Qcur-N is Qcur-N#2). Prints the share of bit-equal elements and the largest gap."""
import sys
import numpy as np

a_dir, b_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for n in names:
    raw = open(f"{a_dir}/{n}.bin", "rb").read()
    head = np.frombuffer(raw[:72], dtype=np.int64)  # type, ne[4], nb[4]
    if head[0] != 0:
        print(f"{n:16s} not f32 in llama.cpp")
        continue
    a = np.frombuffer(raw[72:], dtype=np.float32)
    b = np.fromfile(f"{b_dir}/{n.split('#')[0]}.f32", dtype=np.float32)
    if a.size != b.size:
        print(f"{n:16s} sizes differ: {a.size} vs {b.size}")
        continue
    d = np.abs(a - b)
    print(f"{n:16s} bit-equal {100 * (a == b).mean():6.2f}%  max |diff| {d.max():.3g}")
