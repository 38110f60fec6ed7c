"""tests/optional.py: a missing optional part fails the suite unless R3H_ALLOW_SKIP=1."""

import pytest

from tests.optional import INSTALL, need, need_files


def test_missing_module_fails_naming_it_and_the_install(monkeypatch):
    monkeypatch.delenv("R3H_ALLOW_SKIP", raising=False)
    with pytest.raises(pytest.fail.Exception, match=rf"no_such_r3h_part is not installed.*{INSTALL}"):
        need("no_such_r3h_part")
    with pytest.raises(pytest.fail.Exception, match="no_such_r3h_data"):
        need_files("no_such_r3h_data")


def test_allow_skip_turns_it_into_a_skip(monkeypatch):
    monkeypatch.setenv("R3H_ALLOW_SKIP", "1")
    with pytest.raises(pytest.skip.Exception, match="no_such_r3h_part"):
        need("no_such_r3h_part")


def test_present_module_is_returned():
    assert need("json").dumps([1]) == "[1]"
