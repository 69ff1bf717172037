#!/usr/bin/env python3
"""Generate tiny Hugging Face checkpoints (llama2, llama3, mistral, qwen2, qwen3, gemma3), reference logits, chat renders and GGUF copies.

Run by hand (see README.md); the outputs under models/fixtures/ are committed so tests
need neither torch nor transformers.

    .build/hf-venv/bin/python models/hf-fixtures/make.py            # generate + verify
    .build/hf-venv/bin/python models/hf-fixtures/make.py --verify   # verify only

Outputs:
    models/fixtures/hf/<name>/   config.json, model*.safetensors (+ index for llama3),
                                 tokenizer.json, tokenizer_config.json,
                                 generation_config.json, reference.safetensors,
                                 chat_renders.json
    models/fixtures/gguf/<name>.gguf
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
from hashlib import sha256
from pathlib import Path

import numpy as np
import torch

import gguf
import transformers
from gguf import GGUFReader
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT_HF = ROOT / "models" / "fixtures" / "hf"
OUT_GGUF = ROOT / "models" / "fixtures" / "gguf"
TEMPLATES = HERE / "templates"
DEFAULT_GGUF = Path(
    os.environ.get(
        "FERROLM_DEFAULT_GGUF",
        Path.home() / ".cache/ferrolm/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
)

KEEP = 2048  # vocabulary entries kept from SmolLM2's 49152
SMOLLM_CHKHSH = "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
# convert_hf_to_gguf.py's get_vocab_base_pre() probe string
CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'

# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json "chat_template" (llama.cpp's
# models/templates/ has no Llama 2 file); see TEMPLATES.md.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# Special-token names of the trimmed SmolLM2 vocabulary.
ENDOFTEXT, IM_START, IM_END = 0, 1, 2
TOK = {ENDOFTEXT: "<|endoftext|>", IM_START: "<|im_start|>", IM_END: "<|im_end|>"}

# ---------------------------------------------------------------------------------------
# Fixture definitions
# ---------------------------------------------------------------------------------------

FIXTURES = {
    "llama3": dict(
        cls="LlamaForCausalLM",
        seed=3001,
        dtype="bfloat16",
        shards=2,
        gguf_arch="llama",
        template="meta-llama-Llama-3.2-3B-Instruct.jinja",
        config=dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            hidden_act="silu",
            bos_token_id=IM_START,
            eos_token_id=[ENDOFTEXT, IM_END],
        ),
        # Llama 3.x Instruct: bos <|begin_of_text|> -> <|im_start|>, tokenizer eos
        # <|eot_id|> -> <|im_end|>, generation eos [<|end_of_text|>, <|eot_id|>]
        # -> [<|endoftext|>, <|im_end|>].
        tok=dict(bos=IM_START, eos=IM_END, pad=None, add_bos=True),
        gen=dict(bos_token_id=IM_START, eos_token_id=[ENDOFTEXT, IM_END], do_sample=True,
                 temperature=0.6, top_p=0.9),
        render_kwargs=dict(date_string="26 Jul 2024"),
    ),
    "llama2": dict(
        cls="LlamaForCausalLM",
        seed=2001,
        dtype="float32",
        shards=1,
        gguf_arch="llama",
        template=None,  # LLAMA2_CHAT_TEMPLATE
        config=dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            rope_scaling=None,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            hidden_act="silu",
            bos_token_id=IM_START,
            eos_token_id=IM_END,
        ),
        # Llama 2: <s>=1, </s>=2 -- the same ids as <|im_start|>, <|im_end|> here.
        tok=dict(bos=IM_START, eos=IM_END, pad=None, add_bos=True),
        gen=dict(bos_token_id=IM_START, eos_token_id=IM_END, do_sample=True,
                 temperature=0.6, top_p=0.9),
        render_kwargs={},
    ),
    "mistral": dict(
        cls="MistralForCausalLM",
        seed=4001,
        dtype="float16",
        shards=1,
        gguf_arch="llama",  # convert_hf_to_gguf converts MistralForCausalLM as LlamaModel
        template="mistralai-Mistral-Nemo-Instruct-2407.jinja",
        config=dict(
            model_type="mistral",
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
            rope_scaling=None,
            sliding_window=None,
            tie_word_embeddings=False,
            hidden_act="silu",
            bos_token_id=IM_START,
            eos_token_id=IM_END,
        ),
        tok=dict(bos=IM_START, eos=IM_END, pad=None, add_bos=True),
        gen=dict(bos_token_id=IM_START, eos_token_id=IM_END),
        render_kwargs={},
    ),
    "qwen2": dict(
        cls="Qwen2ForCausalLM",
        seed=5001,
        dtype="float32",
        shards=1,
        gguf_arch="qwen2",
        template="Qwen-Qwen2.5-7B-Instruct.jinja",
        config=dict(
            model_type="qwen2",
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            rope_scaling=None,
            sliding_window=None,
            use_sliding_window=False,
            max_window_layers=3,
            tie_word_embeddings=True,
            hidden_act="silu",
            bos_token_id=ENDOFTEXT,
            eos_token_id=IM_END,
        ),
        # Qwen2.5 Instruct: no bos; eos <|im_end|>, pad <|endoftext|> (same names here).
        tok=dict(bos=None, eos=IM_END, pad=ENDOFTEXT, add_bos=False),
        gen=dict(bos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT, eos_token_id=[IM_END, ENDOFTEXT],
                 do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05),
        render_kwargs={},
    ),
    "qwen3": dict(
        cls="Qwen3ForCausalLM",
        seed=6001,
        dtype="bfloat16",
        shards=1,
        gguf_arch="qwen3",
        template="Qwen-Qwen3-0.6B.jinja",
        config=dict(
            model_type="qwen3",
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            rope_scaling=None,
            attention_bias=False,
            sliding_window=None,
            use_sliding_window=False,
            max_window_layers=2,
            tie_word_embeddings=False,
            hidden_act="silu",
            bos_token_id=ENDOFTEXT,
            eos_token_id=IM_END,
        ),
        tok=dict(bos=None, eos=IM_END, pad=ENDOFTEXT, add_bos=False),
        gen=dict(bos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT, eos_token_id=[IM_END, ENDOFTEXT],
                 do_sample=True, temperature=0.6, top_p=0.95, top_k=20),
        render_kwargs={},
    ),
    # Gemma 3 text-only (google/gemma-3-270m / gemma-3-1b layout: Gemma3ForCausalLM,
    # model_type gemma3_text). 6 layers = 5 sliding-window + 1 global, as the pattern
    # repeats in the real models. query_pre_attn_scalar = head_dim (32) as in the
    # 270M/1B/4B/12B configs (256 = head_dim there); it differs from hidden/heads (16), so
    # a scale derived from hidden_size/num_heads is caught. A value != head_dim would not
    # survive the GGUF: llama.cpp has no key for it and uses 1/sqrt(key_length) (27B:
    # 1/sqrt(hidden/heads)).
    "gemma3": dict(
        cls="Gemma3ForCausalLM",
        seed=7001,
        dtype="bfloat16",
        shards=1,
        gguf_arch="gemma3",
        template="google-gemma-3-270m-it.jinja",
        # Gemma3RMSNorm scales by (1 + w): w = 0.25*N(0,1) (a scale around 1), except the two
        # post-norms, w = 2 + 0.25*N(0,1) (scale around 3; real Gemma post-norm weights are
        # large too). With all scales around 1 the sqrt(hidden)-scaled tied embedding dominates
        # the residual stream and the top-1 prediction is the input token ~85% of the time.
        norm_center=0.0,
        norm_center_by_suffix={"post_attention_layernorm.weight": 2.0,
                               "post_feedforward_layernorm.weight": 2.0},
        config=dict(
            model_type="gemma3_text",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            query_pre_attn_scalar=32,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            rope_local_base_freq=10000.0,
            rope_scaling=None,
            sliding_window=8,
            layer_types=["sliding_attention"] * 5 + ["full_attention"],
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
            attention_bias=False,
            attention_dropout=0.0,
            use_bidirectional_attention=False,
            bos_token_id=IM_START,
            eos_token_id=IM_END,
            pad_token_id=ENDOFTEXT,
        ),
        # Gemma: <pad>=0, <eos>=1, <bos>=2 -> <|endoftext|>=0, <|im_end|>=2, <|im_start|>=1;
        # generation eos [<eos>, <end_of_turn>] -> [<|im_end|>, <|endoftext|>].
        tok=dict(bos=IM_START, eos=IM_END, pad=ENDOFTEXT, add_bos=True),
        gen=dict(bos_token_id=IM_START, eos_token_id=[IM_END, ENDOFTEXT], pad_token_id=ENDOFTEXT,
                 do_sample=True, top_k=64, top_p=0.95),
        render_kwargs={},
    ),
}

# Keys of config.json in the order / shape the published checkpoints use.
# head_dim is only written where the family's published config has it.
FAMILY_HAS_HEAD_DIM = {"llama3": True, "qwen3": True, "gemma3": True}

# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_default_vocab(path: Path):
    r = GGUFReader(str(path))
    f = r.fields
    tokens = list(f["tokenizer.ggml.tokens"].contents())
    types = list(f["tokenizer.ggml.token_type"].contents())
    merges = list(f["tokenizer.ggml.merges"].contents())
    pre = f["tokenizer.ggml.pre"].contents()
    return tokens, types, merges, pre


def tokenizer_json(tokens, types, merges, keep: int) -> dict:
    vocab = {t: i for i, t in enumerate(tokens[:keep])}
    kept = []
    for m in merges:
        a, b = m.split(" ")
        if a in vocab and b in vocab and (a + b) in vocab:
            kept.append(m)
    added = [
        dict(id=i, content=tokens[i], single_word=False, lstrip=False, rstrip=False,
             normalized=False, special=True)
        for i in range(keep)
        if types[i] == gguf.TokenType.CONTROL
    ]
    # Same pipeline as HuggingFaceTB/SmolLM2-*'s tokenizer.json (llama.cpp pre "smollm":
    # individual digits, then the GPT-2 byte-level regex).
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": kept,
        },
    }


def build_tokenizer(default_gguf: Path) -> tuple[dict, dict]:
    tokens, types, merges, pre = read_default_vocab(default_gguf)
    assert pre == "smollm", pre
    info = {"pre": pre, "source_vocab": len(tokens), "source_merges": len(merges)}

    # The pipeline must reproduce llama.cpp's "smollm" pre-tokenizer hash on the full vocab.
    full = Tokenizer.from_str(json.dumps(tokenizer_json(tokens, types, merges, len(tokens))))
    chkhsh = sha256(str(full.encode(CHKTXT, add_special_tokens=False).ids).encode()).hexdigest()
    assert chkhsh == SMOLLM_CHKHSH, f"pre-tokenizer hash {chkhsh} != smollm's"
    info["full_vocab_chkhsh_matches_smollm"] = True

    tj = tokenizer_json(tokens, types, merges, KEEP)
    info["kept_vocab"] = len(tj["model"]["vocab"])
    info["kept_merges"] = len(tj["model"]["merges"])
    b2u = bytes_to_unicode()
    missing = sorted(b for b, u in b2u.items() if u not in tj["model"]["vocab"])
    missing_full = sorted(b for b, u in b2u.items() if u not in tokens)
    assert missing == missing_full, "a byte token present in SmolLM2 was trimmed away"
    info["missing_byte_tokens"] = [f"0x{b:02x}" for b in missing]

    tok = Tokenizer.from_str(json.dumps(tj))
    samples = [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "def add(a, b):\n    return a + b  # 2024-12-31\n\ttabs  and   spaces\n\n",
        "Ünïcödé: café, naïve, 日本語, привет, 🦙🚀 ✅",
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "".join(chr(c) for c in range(32, 127)),
    ]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert all(i < KEEP for i in ids)
        back = tok.decode(ids, skip_special_tokens=False)
        assert back == s, (s, back)
    # every present byte decodes to itself
    present = [b for b in range(256) if b not in missing]
    for b in present:
        tid = tj["model"]["vocab"][b2u[b]]
        assert tid < 256 + 17
    info["roundtrip_samples"] = len(samples)
    info["full_vocab_tokenizer"] = full
    return tj, info


# ---------------------------------------------------------------------------------------
# Model weights
# ---------------------------------------------------------------------------------------


def hf_config(name: str, fx: dict, vocab_size: int):
    c = copy.deepcopy(fx["config"])  # transformers mutates rope_scaling in place
    c["vocab_size"] = vocab_size
    return transformers.AutoConfig.for_model(**c)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int, norm_center: float = 1.0,
              norm_center_by_suffix: dict | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        shape = p.shape
        if name.endswith("norm.weight"):
            # RMSNorm (incl. q_norm/k_norm): around 1, but clearly not all ones
            # (Gemma: around 0, its RMSNorm multiplies by 1 + w)
            c = next((v for k, v in (norm_center_by_suffix or {}).items() if name.endswith(k)), norm_center)
            v = c + 0.25 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            v = 0.3 * torch.randn(shape, generator=g)
        elif "embed_tokens" in name:
            v = 0.3 * torch.randn(shape, generator=g)
        elif "lm_head" in name:
            v = 0.3 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[-1]
            v = (1.6 / math.sqrt(fan_in)) * torch.randn(shape, generator=g)
        p.copy_(v)


def write_classic_config(path: Path, name: str, fx: dict, vocab_size: int) -> None:
    """Rewrite transformers-5's config.json in the shape published checkpoints use
    (rope_theta / rope_scaling / torch_dtype at top level)."""
    saved = json.loads(path.read_text())
    c = fx["config"]
    out = {"architectures": [fx["cls"]]}
    gemma = c["model_type"] == "gemma3_text"
    # google/gemma-3-270m's config.json has layer_types, _sliding_window_pattern,
    # pad_token_id, rope_local_base_freq next to rope_theta / rope_scaling.
    drop = ("rope_parameters", "dtype", "architectures", "transformers_version")
    if not gemma:
        drop += ("layer_types", "pad_token_id")
    for k, v in sorted(saved.items()):
        if k in drop:
            continue
        out[k] = v
    if gemma:
        assert out["_sliding_window_pattern"] == 6 and out["layer_types"] == c["layer_types"], out
        out["rope_local_base_freq"] = c["rope_local_base_freq"]
        out["pad_token_id"] = c["pad_token_id"]
    if not FAMILY_HAS_HEAD_DIM.get(name):
        out.pop("head_dim", None)
    out["rope_theta"] = c["rope_theta"]
    out["rope_scaling"] = copy.deepcopy(c["rope_scaling"])
    out["bos_token_id"] = c["bos_token_id"]
    out["eos_token_id"] = c["eos_token_id"]
    out["vocab_size"] = vocab_size
    out["torch_dtype"] = fx["dtype"]
    out["transformers_version"] = transformers.__version__
    path.write_text(json.dumps(dict(sorted(out.items())), indent=2) + "\n")


# ---------------------------------------------------------------------------------------
# Tokenizer / generation configs and chat renders
# ---------------------------------------------------------------------------------------


def chat_template_for(fx: dict) -> str:
    if fx["template"] is None:
        return LLAMA2_CHAT_TEMPLATE
    return (TEMPLATES / fx["template"]).read_text()


def write_tokenizer_files(d: Path, fx: dict, tj: dict) -> None:
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False) + "\n")
    t = fx["tok"]
    name = lambda i: None if i is None else TOK[i]  # noqa: E731
    cfg = {
        "add_bos_token": t["add_bos"],
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in tj["added_tokens"]
        },
        "bos_token": name(t["bos"]),
        "chat_template": chat_template_for(fx),
        "clean_up_tokenization_spaces": False,
        "eos_token": name(t["eos"]),
        "model_max_length": fx["config"]["max_position_embeddings"],
        "pad_token": name(t["pad"]),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n")
    gen = dict(fx["gen"])
    gen["transformers_version"] = transformers.__version__
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def conversations(name: str) -> list[dict]:
    sys_user = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    multi = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a color."},
    ]
    user_only = [{"role": "user", "content": "Say hi."}]
    conv = [
        dict(messages=sys_user, tools=None, add_generation_prompt=True, kwargs={}),
        dict(messages=multi, tools=None, add_generation_prompt=True, kwargs={}),
        dict(messages=user_only + [{"role": "assistant", "content": "Hi."}], tools=None,
             add_generation_prompt=False, kwargs={}),
    ]
    args = {"city": "Paris", "unit": "celsius"}
    if name in ("llama3", "qwen3", "qwen2"):
        conv.append(dict(
            messages=[
                {"role": "system", "content": "You can call tools."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": args}}]},
                {"role": "tool", "content": "{\"temp\": 21}"},
            ],
            tools=[WEATHER_TOOL], add_generation_prompt=True, kwargs={}))
    if name == "mistral":
        conv.append(dict(
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [
                    {"id": "abc123def", "type": "function",
                     "function": {"name": "get_weather", "arguments": args}}]},
                {"role": "tool", "tool_call_id": "abc123def", "content": "{\"temp\": 21}"},
            ],
            tools=[WEATHER_TOOL], add_generation_prompt=True, kwargs={}))
    if name == "qwen3":
        # thinking: a past assistant turn carrying <think>, and enable_thinking=False
        conv[1]["kwargs"] = {"enable_thinking": True}
        conv[0]["kwargs"] = {"enable_thinking": False}
        conv[2]["messages"] = [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "<think>\nShort answer.\n</think>\n\nHi."},
        ]
    if name == "llama2":
        conv[1]["messages"] = multi  # alternates after the system message
    return conv


def render_all(tokenizer, name: str, fx: dict) -> list[dict]:
    out = []
    for c in conversations(name):
        kwargs = {**fx["render_kwargs"], **c["kwargs"]}
        s = tokenizer.apply_chat_template(
            copy.deepcopy(c["messages"]), tools=copy.deepcopy(c["tools"]),
            add_generation_prompt=c["add_generation_prompt"], tokenize=False, **kwargs)
        out.append({"messages": c["messages"], "tools": c["tools"],
                    "add_generation_prompt": c["add_generation_prompt"], "kwargs": kwargs,
                    "rendered": s})
    return out


def load_tokenizer(d: Path):
    return PreTrainedTokenizerFast.from_pretrained(str(d))


MAX_CHAT_PROMPT = 28


def prompts_for(tokenizer, name: str, fx: dict) -> list[list[int]]:
    """Two plain texts (with the family's BOS where it adds one) and one chat render
    (a user turn, plus a short system turn for qwen2, + generation prompt), cut to its first MAX_CHAT_PROMPT ids when
    longer (llama3's render carries a long system header)."""
    bos = [fx["tok"]["bos"]] if fx["tok"]["add_bos"] else []
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "def f(x):\n    return x * 2  # 2024",
    ]
    ids = [bos + tokenizer.encode(t, add_special_tokens=False) for t in texts]
    msgs = [{"role": "user", "content": "Hi!"}]
    if name == "qwen2":  # without a system turn Qwen2.5's template inserts its long default one
        msgs.insert(0, {"role": "system", "content": "Be brief."})
    chat = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False,
        **fx["render_kwargs"])
    chat_ids = tokenizer.encode(chat, add_special_tokens=False)
    ids.append(chat_ids[:MAX_CHAT_PROMPT])
    if name == "gemma3":
        # 3: well past the sliding window (8); 4: shorter than it
        ids.append(bos + tokenizer.encode(GEMMA_LONG_TEXT, add_special_tokens=False))
        ids.append(bos + tokenizer.encode("Hello world!", add_special_tokens=False))
        assert len(ids[3]) >= 3 * fx["config"]["sliding_window"] and len(ids[4]) < fx["config"]["sliding_window"]
    return ids, {"prompt.2.render": chat, "prompt.2.render_len": len(chat_ids)}


GEMMA_LONG_TEXT = ("Once upon a time, in a small village by the sea, there lived an old fisherman "
                   "who went out every morning before sunrise and came back at noon with stories.")


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False).logits[0].float()


def load_f32(d: Path, **kw):
    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager", **kw)
    return m.eval()


# ---------------------------------------------------------------------------------------
# GGUF (mirrors convert_hf_to_gguf.py: TextModel / LlamaModel / Qwen2Model / Qwen3Model)
# ---------------------------------------------------------------------------------------


def llama_permute(w: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    # convert_hf_to_gguf.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: dict) -> torch.Tensor:
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors for rope_type llama3.

    convert_hf_to_gguf reads original_max_position_embeddings from the TOP LEVEL of
    config.json (default 8192) -- for real Llama 3.x that default equals the value in
    rope_scaling. Here rope_scaling's value (64) is what transformers uses, so it is taken
    from there to keep the GGUF equivalent to the HF checkpoint (see README)."""
    rs = cfg["rope_scaling"]
    base = cfg.get("rope_theta", 10000.0)
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rs.get("factor", 8.0)
    low_freq_factor = rs.get("low_freq_factor", 1.0)
    high_freq_factor = rs.get("high_freq_factor", 4.0)
    old_context_len = rs.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    assert low_freq_wavelen != high_freq_wavelen
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32)


def hf_state_dict(d: Path) -> dict[str, torch.Tensor]:
    sd = {}
    for f in sorted(d.glob("model*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


GGUF_ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
              "gemma3": gguf.MODEL_ARCH.GEMMA3}


def write_gguf(name: str, fx: dict, d: Path, out: Path, tj: dict, pre: str) -> None:
    cfg = json.loads((d / "config.json").read_text())
    arch_name = fx["gguf_arch"]
    arch = GGUF_ARCHS[arch_name]
    n_layer = cfg["num_hidden_layers"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tmap = gguf.get_tensor_name_map(arch, n_layer)

    w = gguf.GGUFWriter(str(out), arch_name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"ferrolm fixture {name}")
    w.add_size_label("tiny")

    if arch_name == "gemma3":
        _gemma3_gguf_parameters(w, cfg)
    else:
        _text_gguf_parameters(w, cfg, d, arch_name)

    # TextModel._set_vocab_gpt2 / get_vocab_base (Gemma3Model uses _set_vocab_sentencepiece;
    # the fixture keeps the shared BPE vocabulary, see README)
    inv = {i: t for t, i in tj["model"]["vocab"].items()}
    special = {a["id"] for a in tj["added_tokens"] if a["special"]}
    tokens = [inv[i] for i in range(cfg["vocab_size"])]
    toktypes = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    special_vocab = gguf.SpecialVocab(d, load_merges=True)
    special_vocab.add_to_gguf(w)
    if arch_name == "gemma3":
        w.add_add_space_prefix(False)  # Gemma3Model.set_vocab
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # tensors (LlamaModel.modify_tensors permutes q/k; Qwen2/Qwen3 do not; Gemma3Model adds 1
    # to every *norm.weight, and drops embedding rows past the tokenizer's vocabulary)
    sd = hf_state_dict(d)
    for hf_name in sorted(sd, key=_tensor_order):
        t = sd[hf_name].to(torch.float32)
        if arch_name == "llama":
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                t = llama_permute(t, n_head, n_head)
            if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                t = llama_permute(t, n_head, n_kv)
        if arch_name == "gemma3":
            if hf_name == "lm_head.weight":
                continue
            if "embed_tokens.weight" in hf_name:
                t = t[:len(tokens)]
            if hf_name.endswith("norm.weight"):
                t = t + GEMMA3_NORM_SHIFT
        new = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert new is not None, hf_name
        w.add_tensor(new, t.contiguous().numpy())
    if arch_name == "llama" and (cfg.get("rope_scaling") or {}).get("rope_type", "").lower() == "llama3":
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                     llama3_rope_factors(cfg).numpy())

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GEMMA3_NORM_SHIFT = 1.0  # convert_hf_to_gguf.py Gemma3Model.norm_shift


def _gemma3_gguf_parameters(w, cfg: dict) -> None:
    """convert_hf_to_gguf.py Gemma3Model.set_gguf_parameters (does not call the base class).
    llama.cpp hard-codes the rest for LLM_ARCH_GEMMA3: swa pattern 6 (every 6th layer
    global), local rope base 10000, attention scale 1/sqrt(key_length) (27B:
    1/sqrt(hidden/heads)); query_pre_attn_scalar / layer_types / rope_local_base_freq
    have no GGUF key."""
    assert cfg.get("attn_logit_softcapping") is None
    w.add_context_length(cfg.get("max_position_embeddings", 131072))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg.get("num_attention_heads", 8))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_key_length(cfg.get("head_dim", 256))
    w.add_value_length(cfg.get("head_dim", 256))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_rope_freq_base(cfg.get("rope_theta", 1_000_000.0))  # global layers
    w.add_sliding_window(cfg["sliding_window"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", 4))
    if cfg.get("rope_scaling") is not None:
        assert cfg["rope_scaling"]["rope_type"] == "linear"
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg["rope_scaling"]["factor"])


def _text_gguf_parameters(w, cfg: dict, d: Path, arch_name: str) -> None:
    n_layer = cfg["num_hidden_layers"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    # TextModel.set_gguf_parameters
    w.add_block_count(n_layer)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    # convert_hf_to_gguf reads hparams via AutoConfig(...).to_dict(), where LlamaConfig /
    # MistralConfig / Qwen3Config always have head_dim (Qwen2Config has none), so it
    # writes key_length/value_length for those even when config.json has no head_dim.
    head_dim = transformers.AutoConfig.from_pretrained(str(d)).to_dict().get("head_dim")
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if arch_name == "llama":
        # LlamaModel.set_gguf_parameters
        w.add_vocab_size(cfg["vocab_size"])
        rope_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
        w.add_rope_dimension_count(rope_dim)


def _tensor_order(n: str):
    # embeddings, then layers in numeric order, then final norm / lm_head
    parts = n.split(".")
    if "layers" in parts:
        return (1, int(parts[parts.index("layers") + 1]), n)
    if "embed_tokens" in n:
        return (0, 0, n)
    return (2, 0, n)


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------


def make_one(name: str, fx: dict, tj: dict, pre: str) -> None:
    d = OUT_HF / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    vocab_size = len(tj["model"]["vocab"])

    torch.manual_seed(fx["seed"])
    cfg = hf_config(name, fx, vocab_size)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    randomize(model, fx["seed"], fx.get("norm_center", 1.0), fx.get("norm_center_by_suffix"))
    dt = getattr(torch, fx["dtype"])
    model = model.to(dt)  # rounds the weights to the stored dtype
    save_kw = {}
    if fx["shards"] > 1:
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        save_kw["max_shard_size"] = int(total * 0.6)
    model.save_pretrained(str(d), **save_kw)
    for f in ("generation_config.json",):
        (d / f).unlink(missing_ok=True)
    write_classic_config(d / "config.json", name, fx, vocab_size)
    write_tokenizer_files(d, fx, tj)
    shards = sorted(d.glob("model*.safetensors"))
    assert len(shards) == fx["shards"], [s.name for s in shards]
    if fx["shards"] > 1:
        assert (d / "model.safetensors.index.json").exists()

    # reference logits: f32 model reloaded from the stored (rounded) weights
    tok = load_tokenizer(d)
    ref = load_f32(d)
    check_loaded_config(name, fx, ref)
    tensors = {}
    meta = {"generator": "models/hf-fixtures/make.py", "transformers": transformers.__version__,
            "torch": torch.__version__, "note": "teacher-forced full-sequence f32 logits, no KV cache"}
    prompts, extra = prompts_for(tok, name, fx)
    meta.update({k: str(v) for k, v in extra.items()})
    for i, ids in enumerate(prompts):
        tensors[f"prompt.{i}"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"logits.{i}"] = logits_of(ref, ids).contiguous()
        meta[f"prompt.{i}.text"] = tok.decode(ids, skip_special_tokens=False)
    # one metadata key: safetensors writes a multi-key metadata map in random order
    save_file(tensors, str(d / "reference.safetensors"), metadata={"fixture": json.dumps(meta, sort_keys=True)})
    renders = render_all(tok, name, fx)
    (d / "chat_renders.json").write_text(json.dumps(renders, ensure_ascii=False, indent=2) + "\n")

    OUT_GGUF.mkdir(parents=True, exist_ok=True)
    write_gguf(name, fx, d, OUT_GGUF / f"{name}.gguf", tj, pre)


def check_loaded_config(name: str, fx: dict, model) -> None:
    """The classic config.json must load back into exactly the intended transformers config."""
    c = model.config
    want = fx["config"]
    rp = getattr(c, "rope_parameters", None) or {}
    if want["model_type"] == "gemma3_text":
        assert rp["full_attention"] == {"rope_type": "default", "rope_theta": want["rope_theta"]}, rp
        assert rp["sliding_attention"] == {"rope_type": "default", "rope_theta": want["rope_local_base_freq"]}, rp
        for k in ("layer_types", "sliding_window", "query_pre_attn_scalar", "head_dim", "hidden_activation",
                  "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"):
            assert getattr(c, k) == want[k], (k, getattr(c, k))
        assert [a.self_attn.is_sliding for a in model.model.layers] == [(i + 1) % 6 != 0 for i in range(6)]
        assert model.model.layers[0].self_attn.scaling == want["query_pre_attn_scalar"] ** -0.5
        rp = rp["full_attention"]
    assert float(rp.get("rope_theta", getattr(c, "rope_theta", 0))) == want["rope_theta"], rp
    rs = want["rope_scaling"]
    if rs:
        for k, v in rs.items():
            assert rp.get(k) == v, (k, rp)
    else:
        assert rp.get("rope_type", "default") == "default", rp
    assert c.tie_word_embeddings == want["tie_word_embeddings"]
    if "head_dim" in want:
        assert c.head_dim == want["head_dim"]
    assert c.num_key_value_heads == want["num_key_value_heads"]


# ---------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------


def logit_stats(lg: torch.Tensor) -> dict:
    p = torch.softmax(lg, -1)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return {"entropy_mean": float(ent.mean()), "entropy_max_possible": math.log(lg.shape[-1]),
            "top1_prob_mean": float(p.max(-1).values.mean()), "top1_prob_max": float(p.max(-1).values.max()),
            "logit_std": float(lg.std())}


@torch.no_grad()
def verify_one(name: str, fx: dict) -> dict:
    d = OUT_HF / name
    res = {}
    ref = load_file(str(d / "reference.safetensors"))
    n = len([k for k in ref if k.startswith("prompt.")])
    res["prompt_lens"] = [int(ref[f"prompt.{i}"].numel()) for i in range(n)]
    model = load_f32(d)
    diffs = []
    for i in range(n):
        lg = logits_of(model, ref[f"prompt.{i}"].tolist())
        diffs.append(float((lg - ref[f"logits.{i}"]).abs().max()))
    res["hf_reload_max_abs_diff"] = max(diffs)
    res["logit_stats"] = logit_stats(torch.cat([ref[f"logits.{i}"] for i in range(n)]))

    # the stored weights really are in the stored dtype
    sd = hf_state_dict(d)
    dts = {str(t.dtype).replace("torch.", "") for t in sd.values()}
    res["stored_dtypes"] = sorted(dts)
    res["tensor_count"] = len(sd)

    # chat renders re-render identically
    tok = load_tokenizer(d)
    for e in json.loads((d / "chat_renders.json").read_text()):
        s = tok.apply_chat_template(e["messages"], tools=e["tools"], add_generation_prompt=e["add_generation_prompt"],
                                    tokenize=False, **e["kwargs"])
        assert s == e["rendered"], (name, s, e["rendered"])
    res["chat_renders"] = len(json.loads((d / "chat_renders.json").read_text()))

    # rope scaling visibly matters (llama3)
    m2 = None
    if fx["config"].get("rope_scaling"):
        cfgj = json.loads((d / "config.json").read_text())
        cfgj["rope_scaling"] = None
        import tempfile
        with tempfile.TemporaryDirectory() as td:
            for f in d.iterdir():
                if f.name != "config.json":
                    os.symlink(f, Path(td) / f.name)
            (Path(td) / "config.json").write_text(json.dumps(cfgj))
            m2 = load_f32(Path(td))
            ids = ref["prompt.0"].tolist()
            res["logit_diff_without_rope_scaling"] = float((logits_of(m2, ids) - ref["logits.0"]).abs().max())

    # GGUF tensors == HF tensors (after un-permuting)
    g = GGUFReader(str(OUT_GGUF / f"{name}.gguf"))
    cfg = json.loads((d / "config.json").read_text())
    arch = GGUF_ARCHS[fx["gguf_arch"]]
    tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    gt = {t.name: t for t in g.tensors}
    worst = 0.0
    norm_shift_seen = False
    for hf_name, t in sd.items():
        gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        x = gt.pop(gname)
        assert x.tensor_type == gguf.GGMLQuantizationType.F32, (gname, x.tensor_type)
        arr = torch.from_numpy(np.array(x.data)).reshape(list(reversed([int(v) for v in x.shape])))
        if fx["gguf_arch"] == "llama":
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                arr = llama_unpermute(arr, cfg["num_attention_heads"])
            if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                arr = llama_unpermute(arr, cfg["num_key_value_heads"])
        want_t = t.float()
        if fx["gguf_arch"] == "gemma3" and hf_name.endswith("norm.weight"):
            want_t = want_t + GEMMA3_NORM_SHIFT  # stored as 1 + w
            norm_shift_seen = True
        worst = max(worst, float((arr - want_t).abs().max()))
    res["gguf_vs_hf_tensor_max_abs_diff"] = worst
    if fx["gguf_arch"] == "gemma3":
        assert norm_shift_seen
        res["gguf_gemma3_kv"] = {k: g.fields[k].contents() for k in g.fields if k.startswith("gemma3.")}
        res.update(gemma3_checks(d, ref, n))
    res["gguf_extra_tensors"] = sorted(gt)
    if "rope_freqs.weight" in gt:
        res["rope_freqs"] = [round(float(v), 6) for v in np.array(gt["rope_freqs.weight"].data)]
        # must equal transformers' inv_freq ratio
        inv = model.model.rotary_emb.inv_freq.float()
        dim = cfg["head_dim"]
        base = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        res["rope_freqs_vs_hf_inv_freq_max_rel_diff"] = float(
            ((base / torch.from_numpy(np.array(gt["rope_freqs.weight"].data)) - inv).abs() / inv).max())
    if cfg["tie_word_embeddings"]:
        assert "output.weight" not in {t.name for t in g.tensors}
    kv = {}
    for k, f in g.fields.items():
        if k.startswith("tokenizer.ggml.") and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                                        "tokenizer.ggml.merges"):
            kv[k] = f.contents()
    res["gguf_tokenizer_kv"] = kv
    res["gguf_vocab"] = len(g.fields["tokenizer.ggml.tokens"].contents())
    res["gguf_merges"] = len(g.fields["tokenizer.ggml.merges"].contents())

    # transformers' own GGUF loader (dequantizes + un-permutes) vs the reference logits.
    # Known transformers gaps, worked around with explicit config overrides:
    #  - qwen3: it ignores qwen3.attention.key_length and uses Qwen3Config's default
    #    head_dim (128), so head_dim is passed in;
    #  - llama3: it ignores the rope_freqs tensor (GGUF has no other llama3-rope
    #    metadata), so a plain load runs unscaled RoPE: compared against the unscaled HF
    #    model, then reloaded with the rope parameters passed in.
    def gguf_logits(**over):
        gm = AutoModelForCausalLM.from_pretrained(str(OUT_GGUF), gguf_file=f"{name}.gguf", dtype=torch.float32,
                                                  attn_implementation="eager", **over).eval()
        return [logits_of(gm, ref[f"prompt.{i}"].tolist()) for i in range(n)]

    def maxdiff(a, b):
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    refs = [ref[f"logits.{i}"] for i in range(n)]
    over = {}
    if name == "qwen3":
        over["head_dim"] = cfg["head_dim"]
        res["transformers_gguf_overrides"] = dict(over)
    if name == "gemma3":
        # the GGUF has no query_pre_attn_scalar; transformers falls back to Gemma3TextConfig's 256
        # (llama.cpp uses 1/sqrt(key_length) = the same 32 here)
        try:
            res["transformers_gguf_plain_vs_ref_max_abs_diff"] = maxdiff(gguf_logits(), refs)
        except Exception as e:  # noqa: BLE001
            res["transformers_gguf_plain_load_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        over["query_pre_attn_scalar"] = cfg["query_pre_attn_scalar"]
        res["transformers_gguf_overrides"] = dict(over)
    try:
        if fx["config"].get("rope_scaling"):
            plain = gguf_logits(**over)
            res["transformers_gguf_plain_vs_ref_max_abs_diff"] = maxdiff(plain, refs)
            res["transformers_gguf_plain_vs_unscaled_hf_max_abs_diff"] = maxdiff(plain, [logits_of(m2, r.tolist()) for r in [ref[f"prompt.{i}"] for i in range(n)]])
            over["rope_parameters"] = {**cfg["rope_scaling"], "rope_theta": cfg["rope_theta"]}
            res["transformers_gguf_overrides"] = dict(over)
        res["transformers_gguf_load_max_abs_diff"] = maxdiff(gguf_logits(**over), refs)
    except Exception as e:  # noqa: BLE001
        res["transformers_gguf_load_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return res


@torch.no_grad()
def gemma3_checks(d: Path, ref: dict, n: int) -> dict:
    """Each Gemma-specific detail visibly changes the reference logits (so the fixture
    catches getting it wrong), and the window does nothing on a prompt shorter than it."""
    out = {}

    def variant(**edit):
        c = transformers.AutoConfig.from_pretrained(str(d))
        for k, v in edit.items():
            if k == "local_theta":
                c.rope_parameters["sliding_attention"]["rope_theta"] = v
            else:
                setattr(c, k, v)
        return load_f32(d, config=c)

    def diff(m, i):
        return float((logits_of(m, ref[f"prompt.{i}"].tolist()) - ref[f"logits.{i}"]).abs().max())

    long_i, short_i = 3, 4
    win = json.loads((d / "config.json").read_text())["sliding_window"]
    for label, edit in [
        ("window_minus_1", dict(sliding_window=win - 1)),
        ("window_plus_1", dict(sliding_window=win + 1)),
        ("no_window", dict(sliding_window=4096)),
        ("all_global", dict(layer_types=["full_attention"] * 6)),
        ("scale_hidden_over_heads", dict(query_pre_attn_scalar=16)),
        ("local_theta_1e6", dict(local_theta=1000000.0)),
    ]:
        m = variant(**edit)
        out[f"gemma3_logit_diff_{label}"] = {"long": diff(m, long_i), "short": diff(m, short_i)}
    # the hand-written mask rule: query p sees keys p-window+1 .. p (window keys, itself included)
    T = 12
    from transformers.masking_utils import sliding_window_overlay
    mask_fn = sliding_window_overlay(win)
    seen = [[kv for kv in range(T) if kv <= q and mask_fn(0, 0, q, kv)] for q in range(T)]
    assert all(s == list(range(max(0, q - win + 1), q + 1)) for q, s in enumerate(seen)), seen
    out["gemma3_window_keys_per_query"] = [len(s) for s in seen]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify", action="store_true", help="only verify existing fixtures")
    ap.add_argument("--only", nargs="*", default=None, help="fixture names")
    args = ap.parse_args()
    names = args.only or list(FIXTURES)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bit-stable CPU reductions

    if not args.verify:
        tj, info = build_tokenizer(DEFAULT_GGUF)
        info.pop("full_vocab_tokenizer")
        print(json.dumps({"tokenizer": info}, indent=2))
        for name in names:
            print(f"== making {name}", flush=True)
            make_one(name, FIXTURES[name], tj, info["pre"])
    results = {}
    for name in names:
        print(f"== verifying {name}", flush=True)
        results[name] = verify_one(name, FIXTURES[name])
        print(json.dumps(results[name], indent=1, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
