"""Cross-checks: ask several sources the same question, show where they agree, and flag
advertising slipped into an answer (issue 16).

``rules`` and ``lexicons`` find promotional words in one answer; ``support`` measures how far
each sentence is said by the other answers; ``scoring`` turns both into a verdict;
``detector`` puts them together; ``judge`` asks an LLM for a second opinion; ``service`` runs a
cross-check for ``POST /v1/nobusy/crosscheck``; ``ads`` runs the detector on any chat answer
(``x-nobusy-check: ads``). Importing this package loads nothing heavy.
"""
