#!/usr/bin/env python3
"""Writes the committed seed corpora in fuzz/corpus/<target>/ (standard library only).

    python3 fuzz/seeds.py [MODEL.gguf]

MODEL.gguf (default: models/fetch-default.sh's path, when present) lends its chat template
to the chat_template seeds. Seeds are small and named by content; the fuzzer's own finds go
to a working corpus outside the clone (scripts/fuzz.sh).
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
SMOLLM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- set ns = namespace(system='') %}{%- for m in messages %}"
    "{%- if m.role == 'system' %}{%- set ns.system = m.content | trim %}{%- endif %}"
    "{%- endfor %}{%- if ns.system %}<|start_header_id|>system<|end_header_id|>\n\n"
    "{{ ns.system }}<|eot_id|>{%- endif %}{%- for m in messages if m.role != 'system' %}"
    "{%- if m.role not in ['user', 'assistant'] %}"
    "{{- raise_exception('roles must be user or assistant') }}{%- endif %}"
    "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
    "{%- endfor %}{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
    "\n\n{%- endif %}"
)
MACROS = (
    "{% macro render(m, depth=0) %}{{ m.role.upper() }}: {{ m.content.strip() | indent(2) }}"
    "{% if depth < 2 %}{{ render(m, depth + 1) }}{% endif %}{% endmacro %}"
    "{% for m in messages %}{{ render(m) }}{{ loop.index }}/{{ messages | length }}"
    "{{ m | tojson }}{% if m.content.startswith('x') %}{% break %}{% endif %}{% endfor %}"
    "{{ strftime_now('%Y-%m-%d') }}{{ messages | map(attribute='role') | join(',') }}"
    "{% for k, v in {'a': 1, 'b': [1, 2]}.items() %}{{ k }}={{ v }}{% endfor %}"
    "{{ '%s-%d' | format('x', 3) }}{{ range(3) | list }}{{ eos_token }}"
)
CHAT = ["system\x1fYou are terse.", "user\x1fWhat is 2+2?", "assistant\x1f4", "user\x1fx and é"]


def gguf(meta: list[tuple[str, int, bytes]], tensors: list[tuple[str, list[int], int, int]],
         data: bytes = b"", version: int = 3) -> bytes:
    """A GGUF file: metadata (key, type, encoded value), tensors (name, ne, type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta))
    for key, ty, value in meta:
        out += string(key) + struct.pack("<I", ty) + value
    for name, ne, ty, offset in tensors:
        out += string(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        out += struct.pack("<IQ", ty, offset)
    out += b"\0" * (-len(out) % 32)
    return out + data


def string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def array(ty: int, items: list[bytes]) -> bytes:
    return struct.pack("<IQ", ty, len(items)) + b"".join(items)


def tiny_vocab() -> list[tuple[str, int, bytes]]:
    """A gpt2-style vocabulary of a few byte-level pieces, merges and one control token."""
    tokens = ["<|im_start|>", "<|im_end|>", "H", "e", "l", "o", "Ġ", "w", "r", "d", "1", "2",
              "ll", "He", "Hell", "Ġw", "or"]
    types = [3, 3] + [1] * (len(tokens) - 2)
    merges = ["l l", "H e", "He ll", "Ġ w", "o r"]
    return [
        ("tokenizer.ggml.model", 8, string("gpt2")),
        ("tokenizer.ggml.pre", 8, string("smollm")),
        ("tokenizer.ggml.tokens", 9, array(8, [string(t) for t in tokens])),
        ("tokenizer.ggml.token_type", 9, array(5, [struct.pack("<i", t) for t in types])),
        ("tokenizer.ggml.merges", 9, array(8, [string(m) for m in merges])),
        ("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 0)),
        ("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 1)),
        ("tokenizer.ggml.add_bos_token", 7, b"\x01"),
        ("tokenizer.chat_template", 8, string("{{ messages[0].content }}")),
    ]


def gguf_seeds() -> list[bytes]:
    floats = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    every_type = [
        ("u8", 0, b"\x07"), ("i8", 1, b"\xf9"), ("u16", 2, struct.pack("<H", 7)),
        ("i16", 3, struct.pack("<h", -7)), ("u32", 4, struct.pack("<I", 7)),
        ("i32", 5, struct.pack("<i", -7)), ("f32", 6, struct.pack("<f", 0.5)),
        ("bool", 7, b"\x01"), ("str", 8, string("llama")), ("u64", 10, struct.pack("<Q", 7)),
        ("i64", 11, struct.pack("<q", -7)), ("f64", 12, struct.pack("<d", 0.5)),
        ("bytes", 9, array(0, [b"\x01", b"\x02"])),
        ("nested", 9, array(9, [array(4, [struct.pack("<I", 1)]), array(8, [string("a")])])),
    ]
    return [
        gguf([], []),
        gguf([("general.architecture", 8, string("llama")), ("answer", 4, struct.pack("<I", 42))],
             [("t", [4], 0, 0)], floats),
        gguf([("general.alignment", 4, struct.pack("<I", 64))] + every_type,
             [("a", [2, 2], 0, 0), ("q", [32], 2, 64)], floats + b"\0" * 60 + b"\x11" * 18,
             version=2),
        gguf(tiny_vocab() + [("general.architecture", 8, string("llama"))], [("t", [4], 0, 0)],
             floats),
    ]


def default_template(model: Path | None) -> str | None:
    """tokenizer.chat_template of a GGUF, read as far as that key."""
    if model is None or not model.is_file():
        return None
    with model.open("rb") as f:
        def take(fmt: str):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))

        def text() -> str:
            (n,) = take("<Q")
            return f.read(n).decode("utf-8", "replace")

        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def skip(ty: int) -> None:
            if ty == 8:
                text()
            elif ty == 9:
                elem, count = take("<IQ")
                if elem in sizes:
                    f.seek(sizes[elem] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(elem)
            else:
                f.seek(sizes[ty], os.SEEK_CUR)

        magic, _, _, n_kv = take("<4sIQQ")
        if magic != b"GGUF":
            return None
        for _ in range(n_kv):
            key = text()
            (ty,) = take("<I")
            if key == "tokenizer.chat_template" and ty == 8:
                return text()
            skip(ty)
    return None


def safetensors(tensors: list[tuple[str, str, list[int], bytes]]) -> bytes:
    import json
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def chat_seed(template: str, messages: list[str], add_generation_prompt: bool = True) -> bytes:
    return bytes([int(add_generation_prompt)]) + "\0".join([template] + messages).encode()


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if model is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        model_dir = os.environ.get("FERROLM_MODEL_DIR") or os.path.join(cache, "ferrolm/models")
        model = Path(model_dir) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    templates = [SMOLLM, LLAMA3, MACROS]
    if (t := default_template(model)) is not None and t not in templates:
        templates.insert(0, t)
    seeds = {
        "gguf_read": gguf_seeds(),
        "chat_template": [chat_seed(t, CHAT[i % 2:]) for i, t in enumerate(templates)]
        + [chat_seed(SMOLLM, [], False), chat_seed("{{ raise_exception('no') }}", ["user\x1fa"])],
        "tokenizer": [s.encode() for s in [
            "Hello, world! The year 2024 had 366 days.",
            "<|im_start|>user\nWhat's up?<|im_end|>\n<|im_start|>assistant\n",
            "naïve café 日本語 👨‍👩‍👧 \t\r\n  spaces   and\ttabs",
            "fn main() { println!(\"{}\", 1 + 2); } // code",
            "<|endoftext|><|im_end|>",
        ]],
        # (bool, Vec<Vec<u8>>) as `arbitrary` reads it: any bytes make some pieces.
        "detokenizer": [b"\x01caf\xc3\xa9 \xf0\x9f\x98\x80!", b"\x00\xff\xfe\xe2\x82\xac\xe2\x82",
                        "naïve 日本 👨‍👩‍👧".encode()],
        # Request bodies as clients send them (the shared fields, chat, completions, refusals).
        "request": [s.encode() for s in [
            '{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}',
            '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content":'
            ' [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}],'
            ' "logprobs": true, "top_logprobs": 5, "n": 2, "stream": true,'
            ' "stream_options": {"include_usage": true}}',
            '{"prompt": ["a", "b"], "logprobs": 3, "echo": true, "stop": ["\\n", "x"],'
            ' "logit_bias": {"42": -100, "7": 2.5}, "top_k": -1, "seed": -9, "min_tokens": 2}',
            '{"prompt": [[1, 2, 3], [4]], "max_tokens": 0, "temperature": 0.7, "top_p": 0.9,'
            ' "min_p": 0.1, "repetition_penalty": 1.1, "stop_token_ids": [2], "ignore_eos": true}',
            '{"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}],'
            ' "tool_choice": "auto", "response_format": {"type": "json_object"}, "best_of": 3,'
            ' "suffix": "s", "prompt_logprobs": -1}',
        ]],
        # Small safetensors files: F32, BF16 and an empty one.
        "safetensors_read": [safetensors([("a", "F32", [2, 2], bytes(16)), ("b", "BF16", [3], bytes(6))]),
                             safetensors([]), safetensors([("x", "I64", [1], bytes(8))])],
        # (String, String, Option<String>) as `arbitrary` reads it: any bytes make some.
        "sse": [b"data: x\r\n\r\n\x00\x1f\u2028", "naïve\r\n\n日本 👨‍👩‍👧".encode(),
                b"[DONE]\n\ndata:"],
    }
    for target, items in seeds.items():
        d = FUZZ / "corpus" / target
        d.mkdir(parents=True, exist_ok=True)
        for item in items:
            (d / f"seed-{hashlib.sha1(item).hexdigest()[:16]}").write_bytes(item)
        print(f"{target}: {len(items)} seeds in {d.relative_to(FUZZ.parent)}")


if __name__ == "__main__":
    main()
