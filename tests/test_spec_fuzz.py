"""A seeded fuzzer over the notation's grammar with huge numbers (issue 9, finding 5).

Every text either raises one of cnnlab's own errors or builds a network that runs forward; no
call takes more than a few seconds; and all of it runs in a child process whose address space
is capped, so a network that tries to allocate terabytes fails the test instead of the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest

EXAMPLES = 1500                 # 13 s of CPU (17 s on a loaded 2-core machine), start included
ADDRESS_SPACE = 4 * 1024**3     # the child's cap, bytes: torch itself maps about 0.8 GB
SLOWEST = 3.0                   # seconds one build plus forward may take
# Limits low enough that whatever builds is small, so a forward pass is quick
LIMITS = {"CNNLAB_MAX_PARAMS": "2000000", "CNNLAB_MAX_ACTIVATION_BYTES": str(64 * 1024**2)}


@pytest.mark.slow
def test_the_grammar_with_huge_numbers_gives_only_cnnlab_errors():
    env = dict(os.environ, **LIMITS)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert f"{EXAMPLES} examples" in proc.stdout, proc.stdout
    print(proc.stdout.strip(), f"({time.perf_counter() - start:.1f} s in all)")


# ------------------------------------------------------------------------- the child process

def _child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from cnnlab.errors import CnnlabError
    from cnnlab.spec import build

    torch.set_num_threads(1)
    huge = ["2147483647", "2147483648", "4294967296", "9223372036854775807",
            "9223372036854775808", "18446744073709551616", "100000000000000000000",
            "999999999", "65536", "0", "00", "9" * 5000]
    small = st.sampled_from(["1", "2", "3", "5", "8"])
    tame = st.one_of(small, small, small, st.integers(1, 40).map(str))
    wild = st.one_of(tame, st.sampled_from(huge), st.sampled_from(huge))

    def opt(s: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(st.just(""), s)

    def tokens(number: st.SearchStrategy[str], rate: st.SearchStrategy[str],
               window: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        size = st.one_of(number, number, st.lists(number, min_size=1, max_size=3).map("x".join))
        conv_mod = st.one_of(size.map("s".__add__), size.map("p".__add__),
                             st.sampled_from(["p=valid", "p=half", "p=full"]),
                             number.map("g".__add__), size.map("d".__add__))
        conv = st.tuples(opt(size), opt(number.map("D".__add__)),
                         st.lists(conv_mod, max_size=2).map("".join)).map(
                             lambda t: "C" + "".join(t))
        pool_mod = st.one_of(size.map("s".__add__), size.map("p".__add__), st.just("c"))
        pool = st.tuples(st.sampled_from("PMA"), opt(size),
                         st.lists(pool_mod, max_size=2).map("".join)).map("".join)
        fc = st.tuples(st.sampled_from(["F", "FC"]), opt(number)).map("".join)
        other = st.one_of(st.sampled_from(["R", "GAP", "S", "LRN", "LRN3"]),
                          window.map("LRN".__add__), rate.map("DROP".__add__))
        return st.one_of(conv, conv, conv, pool, pool, fc, other)

    rates = st.sampled_from(["", "0", "0.5", "1", ".3", "0.99999"])
    junk = st.sampled_from(["C3D", "D4", "DR", "X", "c3", "FCX", "1.5", "1e-999", "1e999"])
    odd = st.sampled_from(["1", "3", "5", "7"])
    # tame tokens, with one token of wild numbers (or junk) among them half of the time
    free = st.tuples(st.lists(tokens(tame, rates, odd), min_size=1, max_size=7),
                     st.one_of(st.just(""), tokens(wild, st.one_of(rates, junk), wild), junk),
                     st.integers(0, 7), st.sampled_from([" ", ",", "", " , "])).map(
                         lambda t: t[3].join(t[0][:t[2]] + [t[1]] * bool(t[1]) + t[0][t[2]:]))
    # networks that fit (each slot with its own fitting values), one number of which may be
    # made huge: the texts most likely to slip a huge number past the checks into PyTorch
    templates = [("C3D{}s{}p{}", "24", "12", "01"), ("C3D{}d{}p{}", "24", "12", "01"),
                 ("C{}D{}", "13", "24"), ("C3x{}D{}g{}", "13", "24", "12"),
                 ("M{}s{}p{}", "2", "12", "01"), ("A{}s{}p{}c", "2", "12", "01"), ("P{}", "12"),
                 ("F{}", "23"), ("FC{} R", "23"), ("LRN{}", "35"), ("C1D{}p=full", "24"),
                 ("R DROP",)]

    @st.composite
    def fitting(draw: st.DrawFn) -> tuple[str, tuple[int, ...], None, bool, int]:
        chosen = draw(st.lists(st.sampled_from(templates), min_size=1, max_size=4))
        slots = [options for _, *per_slot in chosen for options in per_slot]
        values = [draw(st.sampled_from(list(options))) for options in slots]
        if values and draw(st.booleans()):
            values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from(huge))
        text = " ".join(template for template, *_ in chosen).format(*values)
        spatial = draw(st.lists(st.sampled_from([9, 12, 16, 5]), min_size=1, max_size=3))
        return text, (draw(st.sampled_from([2, 1, 3])), *spatial), None, draw(st.booleans()), 32

    dim = st.one_of(st.integers(1, 24), st.integers(1, 24),
                    st.sampled_from([0, -1, 64, 2**31 - 1, 2**31, 10**20]))
    image = st.tuples(st.integers(1, 4), st.integers(1, 24), st.integers(1, 24))
    shape = st.one_of(image, image, image, st.lists(dim, min_size=1, max_size=4).map(tuple))
    classes = st.sampled_from([None, None, None, None, 1, 10, 0, 2**31, 10**20])
    widths = st.sampled_from([32, 32, 32, 1, 2**31 - 1, 2**40])
    cases = st.one_of(st.tuples(free, shape, classes, st.booleans(), widths), fitting())

    max_params = int(os.environ["CNNLAB_MAX_PARAMS"])
    slowest: list[tuple[float, str]] = [(0.0, "")]
    counts = {"built": 0, "refused": 0}

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(cases)
    def fuzz(args: tuple[str, tuple[int, ...], int | None, bool, int]) -> None:
        text, shape, num_classes, strict, width = args
        start = time.perf_counter()
        case = (f"build({text[:200]!r}, {shape}, num_classes={num_classes}, strict={strict}, "
                f"width={width})")
        try:
            net = build(text, shape, num_classes=num_classes, strict=strict, width=width)
        except CnnlabError as err:
            # refused in time, and never by running out of memory: the limits come first
            assert "could not be allocated" not in str(err), case + ": " + str(err)
            counts["refused"] += 1
        else:
            with torch.no_grad():
                y = net.eval()(torch.zeros(1, *shape))
            assert y.shape[0] == 1 and bool(torch.isfinite(y).all()), case
            assert sum(p.numel() for p in net.parameters()) <= max_params, case
            counts["built"] += 1
        took = time.perf_counter() - start
        slowest.append((took, case))
        assert took < SLOWEST, f"{case} took {took:.1f} s"

    fuzz()
    worst = max(slowest)
    print(f"{EXAMPLES} examples: {counts['built']} built and ran forward, {counts['refused']} "
          f"refused with a cnnlab error; slowest {worst[0]:.2f} s: {worst[1][:120]}")


if __name__ == "__main__":
    _child()
