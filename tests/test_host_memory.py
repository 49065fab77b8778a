"""The huge-page malloc hint: shown on a CPU run that would gain from it, never otherwise."""

import pytest

from minigpt_jax.host_memory import HUGEPAGES_TUNABLE, hugepage_hint

GLIBC = ("glibc", "2.36")


@pytest.fixture
def thp(tmp_path):
    def write(mode_line: str):
        path = tmp_path / "enabled"
        path.write_text(mode_line + "\n")
        return path

    return write


def test_a_cpu_run_on_glibc_with_madvise_huge_pages_gets_the_tunable_to_set(thp, monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    hint = hugepage_hint("cpu", {}, thp("always [madvise] never"), GLIBC)
    assert hint is not None and f"GLIBC_TUNABLES={HUGEPAGES_TUNABLE}" in hint
    # other tunables set do not hide it
    assert hugepage_hint("cpu", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                         thp("always [madvise] never"), GLIBC) == hint


@pytest.mark.parametrize(
    "backend, environ, mode, libc, why",
    [
        ("gpu", {}, "always [madvise] never", GLIBC, "not a CPU run"),
        ("cpu", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "always [madvise] never", GLIBC,
         "already set"),
        ("cpu", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"},
         "always [madvise] never", GLIBC, "already set, among others"),
        ("cpu", {}, "[always] madvise never", GLIBC, "every mapping already gets huge pages"),
        ("cpu", {}, "always madvise [never]", GLIBC, "the kernel has them off"),
        ("cpu", {}, "always [madvise] never", ("glibc", "2.31"), "glibc too old for the tunable"),
        ("cpu", {}, "always [madvise] never", ("", ""), "not glibc (musl)"),
        ("cpu", {}, "always [madvise] never", ("glibc", "weird"), "an unreadable version"),
    ],
)
def test_no_hint_where_it_would_not_help(thp, monkeypatch, backend, environ, mode, libc, why):
    monkeypatch.setattr("sys.platform", "linux")
    assert hugepage_hint(backend, environ, thp(mode), libc) is None, why


def test_no_hint_off_linux_or_without_the_kernel_file(thp, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.platform", "darwin")
    assert hugepage_hint("cpu", {}, thp("always [madvise] never"), GLIBC) is None
    monkeypatch.setattr("sys.platform", "linux")
    assert hugepage_hint("cpu", {}, tmp_path / "missing", GLIBC) is None
