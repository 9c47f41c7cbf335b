"""Storage: every byte nobusy keeps, behind the protocols of ``interfaces``.

``sqlite`` opens files privately in WAL mode and runs transactions (``transaction``);
``migrations`` is the one migration system, with a list per database file (``nobusy.db``,
``audit.db``); ``writer`` is the batch writer thread both logs share; ``keys``, ``limits``,
``usage`` and ``audit`` are the SQLite backends; ``ledger`` closes a request's books into them.
Importing this package imports none of them.
"""
