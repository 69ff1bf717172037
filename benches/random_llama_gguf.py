"""A random Llama whose every dimension is a multiple of 256 (hidden 768, 12 layers, 12 heads /
4 KV heads, MLP 2048), as an f32 GGUF with the tokenizer of the GGUF given (the default model's),
for measuring K-quant kernels on real K-quant tensors. Usage: random_llama_gguf.py TOKENIZER.gguf OUT.gguf
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter

src, out = sys.argv[1], sys.argv[2]
r = GGUFReader(src)


def field(name):
    f = r.fields[name]
    return f.contents()


HIDDEN, LAYERS, HEADS, KV_HEADS, FF = 768, 12, 12, 4, 2048
HEAD_DIM = HIDDEN // HEADS
tokens = field("tokenizer.ggml.tokens")
w = GGUFWriter(out, "llama")
w.add_name("random-llama-768")
w.add_context_length(2048)
w.add_embedding_length(HIDDEN)
w.add_block_count(LAYERS)
w.add_feed_forward_length(FF)
w.add_head_count(HEADS)
w.add_head_count_kv(KV_HEADS)
w.add_rope_dimension_count(HEAD_DIM)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(0)  # all f32
w.add_tokenizer_model(field("tokenizer.ggml.model"))
w.add_tokenizer_pre(field("tokenizer.ggml.pre"))
w.add_token_list(tokens)
w.add_token_types(field("tokenizer.ggml.token_type"))
w.add_token_merges(field("tokenizer.ggml.merges"))
for key, add in [
    ("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
    ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
    ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id),
    ("tokenizer.ggml.padding_token_id", w.add_pad_token_id),
]:
    if key in r.fields:
        add(int(field(key)))
if "tokenizer.chat_template" in r.fields:
    w.add_chat_template(field("tokenizer.chat_template"))

rng = np.random.default_rng(0)


def t(name, *shape, scale=0.02):
    w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))


t("token_embd.weight", len(tokens), HIDDEN)
w.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
for i in range(LAYERS):
    p = f"blk.{i}."
    w.add_tensor(p + "attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    w.add_tensor(p + "ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    t(p + "attn_q.weight", HIDDEN, HIDDEN)
    t(p + "attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
    t(p + "attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
    t(p + "attn_output.weight", HIDDEN, HIDDEN)
    t(p + "ffn_gate.weight", FF, HIDDEN)
    t(p + "ffn_up.weight", FF, HIDDEN)
    t(p + "ffn_down.weight", HIDDEN, FF)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {out}")
