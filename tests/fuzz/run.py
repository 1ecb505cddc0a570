"""Coverage-guided fuzzing of one target of ``tests/fuzz/targets.py`` with atheris.

    pip install atheris            # not a test dependency: the replay needs none
    python tests/fuzz/run.py paths -max_total_time=300 tests/fuzz/corpus/paths

The first argument names the target (``paths``, ``request_headers``,
``response_headers``); the rest are libFuzzer's (``-max_total_time=N`` seconds, then
corpus directories: the first one receives the new inputs it finds; ``-jobs``,
``-dict``, ...). A finding is written as ``crash-<sha1>`` in the working directory;
add it to the target's corpus directory once fixed, so that the replay
(``tests/fuzz/test_corpus.py``) keeps it fixed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Libraries imported before the hooks below (see there), not instrumented.
import aiohttp.test_utils  # noqa: F401
import atheris  # optional (the fuzz extra), never needed by the suite
import cryptography.hazmat.primitives.serialization  # noqa: F401
import jwt  # noqa: F401
import yarl  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

# The regexes and str comparisons of the checks guide the fuzzer past them. The hook
# mishandles bytes patterns, as cryptography compiles at import: libraries first.
atheris.enabled_hooks.add("RegEx")
atheris.enabled_hooks.add("str")
with atheris.instrument_imports(include=["broker", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run.py {{{'|'.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
