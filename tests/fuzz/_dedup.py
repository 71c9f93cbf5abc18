"""Keep fuzzing past crashes already seen: for long runs while known bugs are open.

With V2G_FUZZ_DEDUP_DIR=DIR a target's TestOneInput is wrapped: the first input
that raises a given exception (same type, same innermost line in v2g_rt or the
target) is saved to DIR/crash-<signature>-<sha1> with its traceback printed, and
later inputs with that signature are swallowed so the run goes on to find the
next distinct crash. Without it (CI, reproducing) every exception is a crash.
"""
import hashlib
import os
import pathlib
import sys
import traceback

_seen: set[str] = set()


def signature(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "v2g_rt" in f.filename or "/fuzz/" in f.filename]
    where = f"{pathlib.Path(frames[-1].filename).stem}.{frames[-1].name}.{frames[-1].lineno}" if frames else "?"
    return f"{type(e).__name__}-{where}"


def wrap(test_one_input):
    out = os.environ.get("V2G_FUZZ_DEDUP_DIR")
    if not out:
        return test_one_input
    directory = pathlib.Path(out)
    directory.mkdir(parents=True, exist_ok=True)

    def guarded(data: bytes) -> None:
        try:
            test_one_input(data)
        except Exception as e:                                    # noqa: BLE001 - recorded, not hidden
            sig = signature(e)
            if sig in _seen:
                return
            _seen.add(sig)
            path = directory / f"crash-{sig}-{hashlib.sha1(data).hexdigest()[:12]}"
            path.write_bytes(data)
            print(f"\n=== new crash {sig}: {path}", file=sys.stderr)
            traceback.print_exception(e, file=sys.stderr)
    return guarded


def context(e: BaseException, text: str) -> None:
    """Attach the call that failed to e (printed now unless deduplicating, where the note is printed)."""
    e.add_note(text)
    if not os.environ.get("V2G_FUZZ_DEDUP_DIR"):
        print(text, file=sys.stderr)


def call(text: str, fn, *args):
    """fn(*args); an exception leaves with text (the call, in readable form) attached."""
    try:
        return fn(*args)
    except BaseException as e:
        context(e, text)
        raise
