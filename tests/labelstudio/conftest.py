import pytest
from ls_doubles import FakeLabelStudio


@pytest.fixture
def fake_ls():
    return FakeLabelStudio()
