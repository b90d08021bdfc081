"""The engine that carries many jobs at once.

``loop`` is the poll loop (one scheduler thread, a timer heap, a bounded pool
of I/O threads) and ``window`` the adaptive (AIMD) cap on jobs in flight,
both below :mod:`arta.generation`; ``run`` is the run of many jobs above it:
submits paced by the window, outcomes as values (``jobs``); ``mapping``
turns a caller's items into jobs and hands the outcomes back as an iterator.
"""
