"""The official openai client against a running ferrolm, strict response validation on."""
import sys
import traceback

import openai

BASE = sys.argv[1]
client = openai.OpenAI(base_url=BASE, api_key="unused", _strict_response_validation=True, max_retries=0)
# The served model's name; `--no-chat` for a model without a chat template (Gemma 3 270M base).
MODEL = sys.argv[2] if len(sys.argv) > 2 else "SmolLM2-135M-Instruct.Q4_1"
NO_CHAT = "--no-chat" in sys.argv[3:]
# How the greedy completion of "The capital of France is" begins (llama.cpp's on the model).
EXPECT = next((a.split("=", 1)[1] for a in sys.argv[3:] if a.startswith("--expect=")), " Paris")


def test_models_list():
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL], ids


def test_chat():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=12, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chat():
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
        max_tokens=10,
        temperature=0.5,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text and finish in ("stop", "length"), (text, finish)
    assert usage is not None and usage.completion_tokens >= 1
    whole = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
        max_tokens=10,
        temperature=0.5,
        seed=3,
    )
    assert whole.choices[0].message.content == text, (whole.choices[0].message.content, text)


def test_completions():
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2)
    assert r.object == "text_completion"
    assert r.choices[0].text.startswith(EXPECT), r.choices[0].text
    assert len(r.choices[0].logprobs.tokens) == 5
    assert r.usage.completion_tokens == 5


def test_streaming_completions():
    # The SDK types a completion choice's finish_reason as never null, yet streams (OpenAI's
    # and vLLM's alike) send null until the last chunk: this one runs without strict validation.
    loose = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
    text = ""
    for chunk in loose.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True):
        text += chunk.choices[0].text if chunk.choices else ""
    assert text.startswith(EXPECT), text


def test_chat_responses_api():
    # OpenAI's Responses API (named "chat" here: it needs a chat template): instructions, a
    # stored response continued by previous_response_id, retrieval.
    r = client.responses.create(model=MODEL, input="What is the capital of France?", instructions="Answer in one word.",
                                max_output_tokens=8, temperature=0)
    assert r.object == "response" and r.status in ("completed", "incomplete"), r.status
    assert r.output_text and r.output[0].role == "assistant", r.output
    assert r.usage.output_tokens <= 8 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    again = client.responses.retrieve(r.id)
    assert again.id == r.id and again.output_text == r.output_text
    follow = client.responses.create(model=MODEL, input="And of Italy?", previous_response_id=r.id, max_output_tokens=8, temperature=0)
    assert follow.previous_response_id == r.id
    # The earlier turn is in the prompt: more input tokens than the question alone.
    alone = client.responses.create(model=MODEL, input="And of Italy?", max_output_tokens=8, temperature=0, store=False)
    assert follow.usage.input_tokens > alone.usage.input_tokens + 5, (follow.usage, alone.usage)
    try:
        client.responses.retrieve(alone.id)
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("store=False was stored")
    cut = client.responses.create(model=MODEL, input="Count to fifty.", max_output_tokens=3, temperature=0)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_chat_responses_api_streaming():
    # The SDK's stream helper checks the events' order; the text equals the non-streamed one.
    with client.responses.stream(model=MODEL, input="Name a fruit.", max_output_tokens=10, temperature=0) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], kinds
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if final.status == "completed" else "response.incomplete"], kinds
    assert "response.output_text.delta" in kinds
    whole = client.responses.create(model=MODEL, input="Name a fruit.", max_output_tokens=10, temperature=0)
    assert final.output_text == whole.output_text, (final.output_text, whole.output_text)


def test_vllm_parity_fields():
    # Issue "API parity": each through the official client (extra_body for vLLM's fields).
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"
    # vLLM's older structured-output field (an alias of structured_outputs.choice).
    r = client.completions.create(model=MODEL, prompt="Yes or no?", max_tokens=4, temperature=1.0,
                                  extra_body={"guided_choice": ["yes", "no"]})
    assert r.choices[0].text in ("yes", "no"), r.choices[0].text
    # A field that changes the output and is not implemented is refused by name.
    try:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"structured_outputs": {"structural_tag": "{}"}})
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "structural_tag" in str(e)
    else:
        raise AssertionError("structural_tag was accepted")
    # Echo-only scores the prompt. The first prompt token has no log-prob (null, as OpenAI's and
    # vLLM's echo send it), which the SDK's types do not allow: this call runs without strict
    # validation.
    loose = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
    r = loose.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=0, echo=True, logprobs=1)
    assert r.choices[0].text == "The capital of France is" and r.usage.completion_tokens == 0
    assert r.choices[0].logprobs.token_logprobs[0] is None and len(r.choices[0].logprobs.tokens) >= 5
    # Streamed log-prob offsets run on across chunks, as the whole answer's.
    whole = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=1)
    offsets = []
    for chunk in loose.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0,
                                          logprobs=1, stream=True):
        for c in chunk.choices:
            if c.logprobs is not None:
                offsets += c.logprobs.text_offset
    assert offsets == whole.choices[0].logprobs.text_offset, (offsets, whole.choices[0].logprobs.text_offset)
    # include_stop_str_in_output keeps the stop string.
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=16, temperature=0,
                                  stop=[" "], extra_body={"include_stop_str_in_output": True})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text.endswith(" "), r.choices[0].text
    # prompt_logprobs (vLLM's extra field) comes back in the choice.
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=1,
                                  extra_body={"prompt_logprobs": 1})
    pl = r.choices[0].model_extra["prompt_logprobs"]
    assert pl[0] is None and all(isinstance(e, dict) for e in pl[1:]), pl


def test_vllm_parity_fields_streaming():
    # The same fields on streams (the SDK's loose mode: completion chunks carry null finish reasons).
    loose = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
    streamed = "".join(c.choices[0].text for c in loose.completions.create(
        model=MODEL, prompt="Yes or no?", max_tokens=4, stream=True, temperature=1.0,
        extra_body={"guided_choice": ["yes", "no"]}) if c.choices)
    assert streamed in ("yes", "no"), streamed
    text = "".join(c.choices[0].text for c in loose.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=0, echo=True, stream=True) if c.choices)
    assert text == "The capital of France is", text
    text = "".join(c.choices[0].text for c in loose.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=16, temperature=0, stop=[" "], stream=True,
        extra_body={"include_stop_str_in_output": True}) if c.choices)
    assert text == " ", repr(text)


def test_chat_continue_final_message_streaming():
    text = ""
    for chunk in client.chat.completions.create(
        model=MODEL, max_tokens=3, temperature=0, stream=True,
        messages=[{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
    assert text.startswith(" Paris"), text


def test_chat_continue_final_message():
    r = client.chat.completions.create(
        model=MODEL, max_tokens=3, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert r.choices[0].message.content.startswith(" Paris"), r.choices[0].message.content


def test_errors_are_openai_errors():
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    except openai.NotFoundError as e:
        assert e.status_code == 404
    else:
        raise AssertionError("expected 404")
    try:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=-2)
    except openai.BadRequestError as e:
        assert e.status_code == 400
    else:
        raise AssertionError("expected 400")



# Structured outputs (the default model): the constraint, not the model, makes every answer valid.
import json
import re
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Annotated, List, Optional

from pydantic import BaseModel, Field

Short = Annotated[str, Field(max_length=16)]


class Colour(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    street: str = Field(max_length=30)
    city: str = Field(max_length=20)
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    favourite: Colour
    nickname: Optional[str] = Field(default=None, max_length=12)
    address: Address
    hobbies: List[Short] = Field(max_length=3)


class Review(BaseModel):
    title: str = Field(max_length=40)
    stars: int = Field(ge=1, le=5)
    score: float = Field(ge=0.0, le=10.0)
    pros: List[Short] = Field(max_length=2)
    recommended: bool


class Recipe(BaseModel):
    dish: str = Field(max_length=30)
    minutes: int = Field(ge=1, le=300)
    steps: List[Annotated[str, Field(max_length=40)]] = Field(min_length=1, max_length=3)
    vegetarian: Optional[bool] = None


PARSE_CASES = [
    (Person, "Invent a person who lives in Paris."),
    (Person, "Describe a retired teacher."),
    (Person, "Make up a young football player."),
    (Person, "A character from a fairy tale, as data."),
    (Person, "Someone who loves the colour blue."),
    (Review, "Review a pizza restaurant."),
    (Review, "Review the film Jaws."),
    (Review, "A short review of a laptop."),
    (Review, "Review a hotel in Rome."),
    (Review, "Rate a pair of running shoes."),
    (Recipe, "A recipe for pancakes."),
    (Recipe, "How to make a salad."),
    (Recipe, "A quick soup recipe."),
    (Recipe, "Give me a recipe for curry."),
    (Recipe, "Bake bread."),
    (Person, "Tell me about a scientist."),
    (Review, "Review a museum."),
    (Recipe, "A dessert recipe."),
    (Person, "An astronaut's profile."),
    (Review, "Review a bicycle."),
]


def _parse(case):
    model, prompt = case
    r = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        response_format=model,
        max_tokens=400,
        temperature=0.7,
        seed=11,
    )
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop", (prompt, r.choices[0].finish_reason, msg.content)
    assert isinstance(msg.parsed, model), (prompt, msg.content)
    model.model_validate_json(msg.content)
    return msg.parsed


def test_chat_parse_pydantic_models_always_valid():
    with ThreadPoolExecutor(8) as ex:
        parsed = list(ex.map(_parse, PARSE_CASES))
    assert len(parsed) == 20


def test_chat_json_object_always_parses():
    def one(seed):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Reply with a JSON object giving a cat's name and age."}],
            response_format={"type": "json_object"},
            max_tokens=300,
            temperature=0.7,
            seed=seed,
        )
        c = r.choices[0]
        # Every answer that ends is a JSON object; when it ends is the model's (an object has
        # no bound, so one cut by max_tokens is a prefix of one).
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.message.content), dict), c.message.content
        return c.finish_reason

    with ThreadPoolExecutor(8) as ex:
        finishes = list(ex.map(one, range(8)))
    assert finishes.count("stop") >= 6, finishes


def test_completions_response_format_json_schema():
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}}, "required": ["answer"], "additionalProperties": False}
    r = client.completions.create(
        model=MODEL, prompt="Q: What is the capital of France? A (JSON):", max_tokens=100, temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}},
    )
    v = json.loads(r.choices[0].text)
    assert set(v) == {"answer"}, v


def _structured(kind, value, seed, prompt="Say something."):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=60, temperature=1.0,
        seed=seed, extra_body={"structured_outputs": {kind: value}},
    )
    return r.choices[0].message.content, r.choices[0].finish_reason


def test_chat_structured_outputs_regex_choice_grammar_20_each():
    rx = r"[A-Z][a-z]{2,8} [0-9]{1,3}(\.[0-9])?"
    choices = ["positive", "negative", "neutral \"ish\""]
    lark = 'start: greeting ", " name "!"\ngreeting: "Hello" | "Hi" | "Good morning"\nname: /[A-Z][a-z]{1,9}/'
    with ThreadPoolExecutor(8) as ex:
        regex_out = list(ex.map(lambda s: _structured("regex", rx, s), range(20)))
        choice_out = list(ex.map(lambda s: _structured("choice", choices, s, "Is this good?"), range(20)))
        lark_out = list(ex.map(lambda s: _structured("grammar", lark, s, "Greet me."), range(20)))
    for text, finish in regex_out:
        assert re.fullmatch(rx, text) and finish == "stop", (text, finish)
    for text, finish in choice_out:
        assert text in choices and finish == "stop", (text, finish)
    for text, finish in lark_out:
        assert re.fullmatch(r"(Hello|Hi|Good morning), [A-Z][a-z]{1,9}!", text) and finish == "stop", (text, finish)


def test_chat_structured_output_errors_are_400s_naming_the_field():
    bad = [
        ({"structured_outputs": {"regex": "[0-9"}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "start: foo"}}, "structured_outputs"),
        ({"guided_json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "guided_json"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}}, "response_format"),
        ({"structured_outputs": {"grammar": 'root ::= "a"'}}, "structured_outputs"),
        ({"structured_outputs": {"json": {"type": "string", "pattern": "a" * (1 << 20)}}}, "structured_outputs"),
    ]
    for body, field in bad:
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=5, extra_body=body)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body.get("param") == field, (body, e.body)
        else:
            raise AssertionError(f"expected a 400 for {body}")



class GetWeather(BaseModel):
    """The weather in a city."""
    city: str = Field(max_length=20)
    unit: Optional[Colour] = None
    days: int = Field(ge=1, le=7)


class Book(BaseModel):
    """Book a table."""
    restaurant: str = Field(max_length=24)
    people: int = Field(ge=1, le=12)
    time: str = Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$")


TOOLS = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(Book)]
TOOL_MODELS = {"GetWeather": GetWeather, "Book": Book}
TOOL_PROMPTS = ["What's the weather in Paris?", "Book a table for two at Luigi's at 19:30.", "Is it raining in Oslo?",
                "I need dinner for 4 tonight.", "Weather for the next 3 days in Rome?"]


def _tool_call(args):
    i, choice = args
    # One call per answer: a list of calls has no bound, and at temperature 1 this model would
    # run on past max_tokens.
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": TOOL_PROMPTS[i % len(TOOL_PROMPTS)]}], tools=TOOLS,
        tool_choice=choice, parallel_tool_calls=False, max_tokens=300, temperature=1.0, seed=i,
    )
    c = r.choices[0]
    assert c.message.tool_calls, (choice, c.message.content, c.finish_reason)
    for call in c.message.tool_calls:
        assert call.type == "function" and call.id
        TOOL_MODELS[call.function.name].model_validate_json(call.function.arguments)
    return c


def test_chat_tool_choice_required_and_named_20_each():
    named = {"type": "function", "function": {"name": "Book"}}
    with ThreadPoolExecutor(8) as ex:
        required = list(ex.map(_tool_call, [(i, "required") for i in range(20)]))
        forced = list(ex.map(_tool_call, [(i, named) for i in range(20)]))
    assert all(c.finish_reason == "tool_calls" for c in required), [c.finish_reason for c in required]
    assert all(len(c.message.tool_calls) == 1 and c.message.tool_calls[0].function.name == "Book" for c in forced)
    assert all(len(c.message.tool_calls) == 1 for c in required)
    # Parallel calls (greedy): a list of calls, each valid.
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
                                       tools=TOOLS, tool_choice="required", max_tokens=400, temperature=0)
    if r.choices[0].finish_reason == "tool_calls":
        for call in r.choices[0].message.tool_calls:
            TOOL_MODELS[call.function.name].model_validate_json(call.function.arguments)


def test_chat_tool_calls_stream_as_deltas():
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Book a table for 3 at Roma at 20:00."}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "Book"}}, max_tokens=300, temperature=0, stream=True,
    )
    calls, finish = {}, None
    for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert list(calls) == [0] and calls[0]["name"] == "Book", calls
    Book.model_validate_json(calls[0]["arguments"])
    whole = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Book a table for 3 at Roma at 20:00."}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "Book"}}, max_tokens=300, temperature=0,
    )
    assert whole.choices[0].message.tool_calls[0].function.arguments == calls[0]["arguments"]
    assert finish == whole.choices[0].finish_reason


def test_chat_tool_history_renders():
    msgs = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "GetWeather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, tool_choice="none", max_tokens=20, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_chat_auto_tool_call_then_answer():
    # `auto`: the model's output read by the hermes parser. The output is scripted by a regex
    # constraint (a literal call), so the parse and the round trip are deterministic.
    call = '<tool_call>\n{"name": "GetWeather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>'
    script = {"structured_outputs": {"regex": re.escape(call)}}
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, max_tokens=100, extra_body=script)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None, c
    assert [t.function.name for t in c.message.tool_calls] == ["GetWeather"]
    assert json.loads(c.message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 1}
    # The same streamed: the call arrives as a delta, the content stays empty.
    content, calls, finish = "", [], None
    for chunk in client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, max_tokens=100,
                                                extra_body=script, stream=True):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            calls += ch.delta.tool_calls or []
            finish = ch.finish_reason or finish
    assert content == "" and finish == "tool_calls" and [d.function.name for d in calls] == ["GetWeather"]
    # The tool's result goes back; the model answers in text (no call this time).
    msgs += [c.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": c.message.tool_calls[0].id, "content": "Sunny, 21 C"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, max_tokens=30, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r.choices[0]


def test_chat_reasoning_is_split_off():
    # --reasoning-parser qwen3; the thinking scripted by a regex constraint (a literal).
    out = "<think>A greeting.</think>Hello!"
    body = {"structured_outputs": {"regex": re.escape(out)}}
    msgs = [{"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, extra_body=body)
    m = r.choices[0].message
    assert m.content == "Hello!" and m.model_extra["reasoning"] == "A greeting.", m
    assert m.model_extra["reasoning_content"] == "A greeting."
    thinking, content = "", ""
    for chunk in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, extra_body=body, stream=True):
        for ch in chunk.choices:
            thinking += (ch.delta.model_extra or {}).get("reasoning") or ""
            content += ch.delta.content or ""
    assert (thinking, content) == ("A greeting.", "Hello!"), (thinking, content)
    # The thinking goes back in the history (as vLLM takes it) and renders.
    msgs += [{"role": "assistant", "content": "Hello!", "reasoning": "A greeting."}, {"role": "user", "content": "Bye"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, temperature=0)
    assert r.choices[0].message.content is not None


def test_chat_tool_errors_are_400s():
    many = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)]
    cases = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "Nope"}}}, "tool_choice"),
        ({"tools": many, "tool_choice": "required"}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}], "tool_choice": "required"}, "tool_choice"),
    ]
    import time
    for body, field in cases:
        t = time.time()
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=5, extra_body=body)
        except openai.BadRequestError as e:
            assert e.body.get("param") == field, (field, e.body)
        else:
            raise AssertionError(f"expected a 400 for {field}")
        assert time.time() - t < 1.0


if __name__ == "__main__":
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)
             and not (NO_CHAT and "chat" in n)]
    passed = failed = 0
    for name, fn in tests:
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"openai-client: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
