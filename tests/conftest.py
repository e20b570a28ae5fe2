"""Test ordering for the two-worker CI run: the longest tests start first.

``make test`` runs pytest-xdist with two workers on two cores; the smoke-book build alone takes minutes. Started
last, it would leave one worker idle while the other finishes it; started first (longest first, the rest
work-stolen by whichever worker is free), the two workers end together. Only the order changes: every test is
independent of the others.
"""

#: Tests known to take longest (seconds on 2 shared cores), started first in this order.
LONGEST_FIRST = ("test_smoke_book_builds_with_warnings_as_errors", "test_first_search_on_an_empty_cache",
                 "test_readme_database_examples_run", "test_readme_search_examples_run",
                 "test_fit_runs_under_torchrun")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        for k, name in enumerate(LONGEST_FIRST):
            if item.name.startswith(name):
                return k
        return len(LONGEST_FIRST)  # the rest in collection order, so module fixtures are set up once

    items.sort(key=rank)  # stable: collection order within each rank
