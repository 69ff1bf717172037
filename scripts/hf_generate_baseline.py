"""The peer for `ferrolm bench throughput` on a GPU: Hugging Face transformers generate()
on a Llama-3.1-8B-shaped model with random bf16 weights, batch 256, greedy, EOS ignored.

    python3 scripts/hf_generate_baseline.py models/configs/llama-3.1-8b.json 1000 128 128 [batch]

Prints one line: `hf generate: N x IN/OUT batch B: X output tok/s, Y total tok/s (S s)`.
"""
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

cfg_path, n, inp, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
batch = int(sys.argv[5]) if len(sys.argv) > 5 else 256
config = LlamaConfig(**json.load(open(cfg_path)))
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = LlamaForCausalLM(config).eval()
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = 0
prompts = torch.randint(5, config.vocab_size, (n, inp), device="cuda")


def run(ids):
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, max_new_tokens=out,
                              min_new_tokens=out, do_sample=False)


run(prompts[: min(batch, 8), :])  # warm-up: kernels, allocator
torch.cuda.synchronize()
t = time.perf_counter()
produced = 0
for s in range(0, n, batch):
    g = run(prompts[s: s + batch])
    produced += (g.shape[1] - inp) * g.shape[0]
torch.cuda.synchronize()
secs = time.perf_counter() - t
print(f"hf generate: {n} x {inp}/{out} batch {batch}: {produced / secs:.0f} output tok/s, "
      f"{(produced + n * inp) / secs:.0f} total tok/s ({secs:.1f} s)", flush=True)
