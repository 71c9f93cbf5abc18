"""Fuzz target: config.parse() on arbitrary bytes.

Contract: parse(text, path) returns a Site or raises config.ConfigError; any other
exception (or a hang) is a bug. The input is the file's bytes: UTF-8 when it
decodes, else Latin-1, so every byte string reaches the TOML parser and the seeds
(real site configs) are read as the files they are.

    python tests/fuzz/fuzz_config.py -runs=N -seed=S [new-corpus-dir] tests/fuzz/corpus/config
"""
import sys

import atheris

import _dedup

with atheris.instrument_imports(include=["v2g_rt"]):
    from v2g_rt import Site, config


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def TestOneInput(data: bytes) -> None:
    text = decode(data)
    try:
        site = config.parse(text, "<fuzz>")
    except config.ConfigError as e:
        assert e.problems, "ConfigError without problems"
        assert all(p.code.startswith("ERR_") for p in e.problems), e.problems
        return
    assert isinstance(site, Site), type(site)
    assert not site.problems(), site.problems()


def main() -> None:
    atheris.Setup(sys.argv, _dedup.wrap(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
