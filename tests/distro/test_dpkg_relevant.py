"""relevant_stanzas keeps exactly what a resolution can reach from the installed names."""

from __future__ import annotations

from suture.distro.dpkg.relevant import relevant_stanzas

MAIN = b"""Package: a
Version: 2
Depends: libb (>= 1) | alt, c:any [amd64], <!nocheck> d
Pre-Depends: e

Package: libb
Version: 1
Provides: virt (= 1)

Package: c
Version: 1
Depends: mta

Package: postfix
Version: 3
Provides: mta,
 other-virt

Package: unrelated
Version: 9
Depends: a

Package: d
Version: 1

Package: e
Version: 1
"""
SECURITY = b"""Package: alt
Version: 1

Package: lonely
Version: 1
"""


def test_closure_over_depends_alternatives_and_provides() -> None:
    main, security = relevant_stanzas([MAIN, SECURITY], {"a"})
    names = [line.split(b": ")[1] for line in (main + security).splitlines()
             if line.startswith(b"Package:")]
    assert names == [b"a", b"libb", b"c", b"postfix", b"d", b"e", b"alt"]
    assert main.startswith(b"Package: a\n") and main.endswith(b"Version: 1\n")


def test_nothing_reachable_gives_empty_indexes() -> None:
    assert relevant_stanzas([MAIN, SECURITY], {"nothing-installed"}) == [b"", b""]
