"""Authenticated DNS seeds (``protocols/dns-seed.md``): sans-IO format and client core.

``url`` parses ``pzseed://<key>@<domain>``; ``tree`` builds and parses the signed TXT tree;
``sync`` is the client's state machine (names to query out, TXT answers in, verified signed
peer records out). No module here does I/O or reads a clock: the DNS adapter drives them.
"""
