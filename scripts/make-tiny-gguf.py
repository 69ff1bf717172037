"""A small GGUF for GPU smoke tests where the default model cannot travel (98 MB): the
default model's tokenizer and chat template, 2 layers of its shape, random weights in
its types (Q4_1 layers, a tied Q8_0 embedding), written with the gguf package.

    python3 scripts/make-tiny-gguf.py SOURCE.gguf OUT.gguf
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize

src, dst = sys.argv[1], sys.argv[2]
r = GGUFReader(src)
w = GGUFWriter(dst, "llama")
LAYERS = 2
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    t = field.types[0]
    if name == "llama.block_count":
        w.add_uint32(name, LAYERS)
        continue
    if name == "llama.context_length":
        w.add_uint32(name, 2048)
        continue
    if t == GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            vals = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        else:
            vals = [field.parts[i].tolist()[0] for i in field.data]
        w.add_array(name, vals)
    elif t == GGUFValueType.STRING:
        w.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
    else:
        w.add_key_value(name, field.parts[field.data[0]].tolist()[0], t)

rng = np.random.default_rng(0)
h, ff, vocab, nh, nkv = 576, 1536, 49152, 9, 3
hd = h // nh


def rand(shape, fan_in):
    b = np.sqrt(3.0 / fan_in)
    return rng.uniform(-b, b, size=shape).astype(np.float32)


def add(name, data, qtype):
    if qtype == Q.F32:
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)


add("token_embd.weight", rng.uniform(-1, 1, size=(vocab, h)).astype(np.float32), Q.Q8_0)
add("output_norm.weight", np.ones(h, np.float32), Q.F32)
for i in range(LAYERS):
    p = f"blk.{i}"
    add(f"{p}.attn_norm.weight", np.ones(h, np.float32), Q.F32)
    add(f"{p}.ffn_norm.weight", np.ones(h, np.float32), Q.F32)
    add(f"{p}.attn_q.weight", rand((nh * hd, h), h), Q.Q4_1)
    add(f"{p}.attn_k.weight", rand((nkv * hd, h), h), Q.Q4_1)
    add(f"{p}.attn_v.weight", rand((nkv * hd, h), h), Q.Q4_1)
    add(f"{p}.attn_output.weight", rand((h, nh * hd), nh * hd), Q.Q4_1)
    add(f"{p}.ffn_gate.weight", rand((ff, h), h), Q.Q4_1)
    add(f"{p}.ffn_up.weight", rand((ff, h), h), Q.Q4_1)
    add(f"{p}.ffn_down.weight", rand((h, ff), ff), Q.Q4_1)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
