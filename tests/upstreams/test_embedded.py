"""The embedded model (SmolLM2-135M via llama.cpp) answers real requests through nobusy."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def llama() -> object:
    """The same GGUF loaded directly: llama.cpp's own tokenizer and non-streaming usage."""
    from llama_cpp import Llama

    from nobusy.upstreams.embedded import default_model_path

    llm = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=2, verbose=False)
    yield llm
    llm.close()


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_embedded_token_counts_are_the_tokenizers(
    base_url: str, llama: object, stream: bool
) -> None:
    # A CJK character is often two or three byte tokens that llama.cpp streams as one chunk:
    # counting chunks undercounts the answer and (by subtraction) overcounts the prompt.
    from llama_cpp import Llama

    assert isinstance(llama, Llama)
    messages = [{"role": "user", "content": CHINESE}]
    params = {"max_tokens": 24, "temperature": 0, "seed": 1}
    direct = llama.create_chat_completion(messages=messages, **params)  # type: ignore[arg-type]
    expected = direct["usage"]  # type: ignore[index]
    # The prompt is the chat template applied, tokenized, as llama.cpp itself counts it.
    template = llama.metadata["tokenizer.chat_template"]
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos = llama.detokenize([llama.token_eos()], special=True).decode()
    bos = llama.detokenize([llama.token_bos()], special=True).decode()
    prompt = Jinja2ChatFormatter(template, eos, bos)(messages=messages).prompt
    assert expected["prompt_tokens"] == len(llama.tokenize(prompt.encode(), False, True))

    client = openai_client(base_url)
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="local",
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                **params,  # type: ignore[arg-type]
            )
        )
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(
            model="local",
            messages=messages,  # type: ignore[arg-type]
            **params,  # type: ignore[arg-type]
        ).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        expected["prompt_tokens"],
        expected["completion_tokens"],
    )
