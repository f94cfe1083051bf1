"""``jobctl``, the command-line client of the job queue daemon.

``main`` parses (with ``parser``) and dispatches; each command lives in a
sibling module imported only when that command runs, so ``jobctl --help``
never loads the LUXI client. Exit codes are listed in ``exitcodes``.
Nothing here imports the daemon's modules, only ``jobqueue.luxi.client``
and the shared vocabulary (``constants``, ``errors``, ``paths``).
"""
