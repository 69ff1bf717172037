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
    # A structured-output field that vLLM honours is refused by name, never ignored.
    try:
        client.completions.create(model=MODEL, prompt="Yes or no?", max_tokens=2, extra_body={"guided_choice": ["yes", "no"]})
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "guided_choice" in str(e)
    else:
        raise AssertionError("guided_choice was accepted")
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
    try:
        for _ in loose.completions.create(model=MODEL, prompt="Yes or no?", max_tokens=2, stream=True,
                                          extra_body={"guided_choice": ["yes", "no"]}):
            pass
    except openai.BadRequestError as e:
        assert "guided_choice" in str(e)
    else:
        raise AssertionError("guided_choice was accepted on a stream")
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
