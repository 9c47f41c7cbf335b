"""What may pass in and out: sensitive words, PII.

This module is the sensitive-word filtering (敏感词过滤) of requests and of answers as they
stream; ``lexicon``, ``normalize`` and ``stream`` are its parts. ``pii`` masks personal data
before a request leaves and puts it back in the answer; ``payload`` lists every string of a
request that goes upstream, for both; ``filtering`` puts the guard and PII on a request's path.

    guard = Guard.load(settings.guard, base_dir=config_file.parent)
    verdict = guard.check_input(text)            # .blocked, .text (masked), .hits
    output = guard.output_filter()               # one per answer
    step = output.feed(piece)                    # .text to release now, .hits, .blocked
    step = output.finish()                       # at the end of the answer

Words are matched after folding (``nobusy.guard.normalize.normalize``), so spaces, punctuation,
zero-width characters, full-width forms, case, traditional characters and look-alike letters
do not hide them; hits carry exact spans of the original text.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nobusy.errors import ConfigError
from nobusy.guard.lexicon import (
    Action,
    Entry,
    GuardSettings,
    Hit,
    LexiconSettings,
    Matcher,
    Verdict,
    read_lexicon,
)
from nobusy.guard.stream import FilterStep, StreamFilter

__all__ = [
    "Action",
    "FilterStep",
    "Guard",
    "GuardSettings",
    "Hit",
    "LexiconSettings",
    "Matcher",
    "StreamFilter",
    "Verdict",
]

log = logging.getLogger("nobusy.guard")

# Texts longer than this are checked through a stream filter, a piece at a time. Folding and
# matching are single C calls that hold the GIL: on a 10 MB text each one is a stall of the
# event loop even when the check runs on a worker thread (nobusy.offload), while pieces let
# the interpreter hand the GIL back between them. The stream filter gives the same verdict
# as the whole-text check (tests/guard/test_stream.py proves it on random texts).
_PIECE = 16_384

# What a lexicon file looked like when it was read: (mtime in ns, size), None if missing.
_Signature = tuple[tuple[int, int] | None, ...]


@dataclass(frozen=True)
class _Compiled:
    """One consistent generation of the lexicons, replaced whole on reload."""

    input: Matcher
    output: Matcher
    signature: _Signature


class Guard:
    """Lexicons compiled for checking requests and answers; rebuilt when their files change.

    Each check looks at the files' mtimes at most once per ``reload_interval`` seconds (a few
    ``stat`` calls on the caller's thread); a file that fails to read keeps the words in use.
    """

    def __init__(
        self,
        lexicons: Sequence[LexiconSettings],
        *,
        reload_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lexicons = tuple(lexicons)
        self._paths = list(dict.fromkeys(lexicon.path for lexicon in self.lexicons))
        self._interval = reload_interval
        self._clock = clock
        self._next_check = clock() + reload_interval
        self._lock = threading.Lock()
        signature = self._signature()
        self._compiled = self._build(signature)  # raises ConfigError: nothing to fall back to
        self._failed: _Signature | None = None  # the files as they were when a reload failed

    @classmethod
    def load(
        cls,
        settings: GuardSettings,
        base_dir: Path,
        *,
        reload_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> Guard:
        """Read the lexicons, relative paths from ``base_dir`` (the config file's folder)."""
        lexicons = [
            lexicon.model_copy(update={"path": base_dir / lexicon.path})
            for lexicon in settings.lexicons
        ]
        return cls(lexicons, reload_interval=reload_interval, clock=clock)

    @property
    def checks_input(self) -> bool:
        """Whether any word applies to requests (else ``check_input`` can be skipped)."""
        return not self._current().input.empty

    @property
    def checks_output(self) -> bool:
        """Whether any word applies to answers (else the output filter can be skipped)."""
        return not self._current().output.empty

    @property
    def words(self) -> tuple[int, int]:
        """How many distinct folded words apply to requests and to answers."""
        compiled = self._current()
        return compiled.input.words, compiled.output.words

    def check_input(self, text: str) -> Verdict:
        """Check one text of a request (a message's content) with the input lexicons."""
        matcher = self._current().input
        if len(text) <= _PIECE:
            return matcher.check(text)
        return _check_in_pieces(matcher, text)

    def check_output(self, text: str) -> Verdict:
        """Check a whole answer at once with the output lexicons."""
        return self._current().output.check(text)

    def output_filter(self) -> StreamFilter:
        """A filter for one streamed answer; it keeps the words in use when it was made."""
        return StreamFilter(self._current().output)

    def reload(self) -> bool:
        """Rebuild now if a file changed since it was read; true if new words are in use."""
        with self._lock:
            signature = self._signature()
            if signature in (self._compiled.signature, self._failed):
                return False
            try:
                compiled = self._build(signature)
            except ConfigError as exc:
                self._failed = signature
                log.warning("guard: keeping the previous lexicons: %s", exc.message)
                return False
            self._compiled, self._failed = compiled, None
        words = compiled.input.words, compiled.output.words
        log.info("guard: lexicons reloaded (%d input, %d output words)", *words)
        return True

    def _current(self) -> _Compiled:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._interval
            if not self._lock.locked():  # another thread is already reloading
                self.reload()
        return self._compiled

    def _signature(self) -> _Signature:
        def stat(path: Path) -> tuple[int, int] | None:
            try:
                info = os.stat(path)
            except OSError:
                return None
            return info.st_mtime_ns, info.st_size

        return tuple(stat(path) for path in self._paths)

    def _build(self, signature: _Signature) -> _Compiled:
        entries = {path: read_lexicon(path) for path in self._paths}  # each file read once

        def matcher(scopes: tuple[str, ...]) -> Matcher:
            return Matcher(
                Entry(word, str(lexicon.path), category, lexicon.action)
                for lexicon in self.lexicons
                if lexicon.scope in scopes
                for word, category in entries[lexicon.path]
            )

        both = all(lexicon.scope == "both" for lexicon in self.lexicons)
        output = matcher(("output", "both"))
        return _Compiled(output if both else matcher(("input", "both")), output, signature)


def _check_in_pieces(matcher: Matcher, text: str) -> Verdict:
    """``matcher.check(text)``, fed to a stream filter in pieces of ``_PIECE`` characters."""
    stream = StreamFilter(matcher)
    released: list[str] = []
    hits: list[Hit] = []
    for at in range(0, len(text) + _PIECE, _PIECE):
        step = stream.feed(text[at : at + _PIECE]) if at < len(text) else stream.finish()
        released.append(step.text)
        hits.extend(step.hits)
        if step.blocked:
            # The caller refuses the request; what follows the block word is never sent.
            return Verdict(True, "".join(released), hits)
    return Verdict(False, "".join(released), hits)
