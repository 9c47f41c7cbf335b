"""The embedded model (SmolLM2-135M via llama.cpp) answers real requests through nobusy."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import openai
import pytest

from tests.conftest import openai_client

pytestmark = pytest.mark.embedded


def test_embedded_model_answers_non_streaming(base_url: str) -> None:
    client = openai_client(base_url)
    raw = client.chat.completions.with_raw_response.create(
        model="local",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
        seed=1,
    )
    completion = raw.parse()
    assert raw.headers["x-nobusy-upstream"] == "local"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 16
    assert completion.usage.prompt_tokens > 5  # the chat template's system prompt counts


def test_embedded_model_streams_token_by_token(base_url: str) -> None:
    client = openai_client(base_url)
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(pieces)


def test_embedded_model_is_deterministic_with_a_seed(base_url: str) -> None:
    client = openai_client(base_url)

    def ask() -> str | None:
        completion = client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            temperature=0,
            seed=42,
        )
        return completion.choices[0].message.content

    assert ask() == ask()


def test_embedded_model_continues_an_answer_cut_mid_stream(base_url: str) -> None:
    client = openai_client(base_url)
    raw = client.chat.completions.with_raw_response.create(
        model="continue-local",
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        max_tokens=24,
        temperature=0,
    )
    completion = raw.parse()
    text = completion.choices[0].message.content or ""
    # The fake sent its first three pieces and dropped; llama.cpp went on from there.
    assert text.startswith("Fake answer to: ")
    assert len(text) > len("Fake answer to: ")
    assert "continuing on local" in raw.headers["x-nobusy-failover"]


CHINESE = "请用中文简单介绍一下长城的历史，以及它为什么这么有名。"


# Run in a child process: importing llama.cpp leaves a /dev/null handle open until exit,
# which Python reports as a ResourceWarning.
_DIRECT = """
import json, sys
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from nobusy.upstreams.embedded import default_model_path

messages = [{"role": "user", "content": sys.argv[1]}]
llm = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=2, verbose=False)
usage = llm.create_chat_completion(messages=messages, max_tokens=24, temperature=0, seed=1)["usage"]
eos = llm.detokenize([llm.token_eos()], special=True).decode()
bos = llm.detokenize([llm.token_bos()], special=True).decode()
template = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos, bos)
tokens = llm.tokenize(template(messages=messages).prompt.encode(), add_bos=False, special=True)
print(json.dumps({"usage": usage, "template_tokens": len(tokens)}))
"""


@pytest.fixture(scope="module")
def direct() -> dict[str, Any]:
    """llama.cpp's own count for the same GGUF and request: its non-streaming usage (the
    prompt tokenized with the chat template applied, the completion as generated tokens)."""
    out = subprocess.run(
        [sys.executable, "-c", _DIRECT, CHINESE], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_embedded_token_counts_are_the_tokenizers(
    base_url: str, direct: dict[str, Any], stream: bool
) -> None:
    # A CJK character is often two or three byte tokens that llama.cpp streams as one chunk:
    # counting chunks undercounts the answer and (by subtraction) overcounts the prompt.
    expected = direct["usage"]
    assert expected["prompt_tokens"] == direct["template_tokens"]
    messages: Any = [{"role": "user", "content": CHINESE}]
    params: Any = {"max_tokens": 24, "temperature": 0, "seed": 1}
    client = openai_client(base_url)
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="local",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **params,
            )
        )
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(model="local", messages=messages, **params).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        expected["prompt_tokens"],
        expected["completion_tokens"],
    )


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_embedded_model_answers_a_text_completion(base_url: str, stream: bool) -> None:
    # /v1/completions: a raw completion of the prompt (`completions: true` by default).
    client = openai_client(base_url)
    raw = client.completions.with_raw_response.create(
        model="local", prompt="The capital of France is", max_tokens=6, temperature=0, seed=1,
        stream=stream, stream_options={"include_usage": True} if stream else None,
    )  # fmt: skip
    assert raw.headers["x-nobusy-upstream"] == "local"
    result: Any = raw.parse()
    if stream:
        chunks = list(result)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        text, usage = result.choices[0].text, result.usage
    assert text.strip()
    assert usage is not None and 0 < usage.completion_tokens <= 6
    assert usage.prompt_tokens == 5  # the prompt's own tokens: no chat template around it


def test_embedded_model_takes_no_suffix_and_no_image(base_url: str) -> None:
    # Its GGUF has no fill-in-the-middle tokens and it reads no images: 400s naming why.
    client = openai_client(base_url)
    with pytest.raises(openai.BadRequestError, match="fim: true"):
        client.completions.create(model="local", prompt="def f(", suffix="return 1")
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(openai.BadRequestError, match="vision: true"):
        client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}],
        )
