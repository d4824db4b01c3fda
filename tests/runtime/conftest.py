import pytest
import yaml

from tests.runtime.fake_hosts import INSTANT


@pytest.fixture
def profiles_dir(tmp_path):
    """A profile directory with one device so fast that predicted device times are ~0 (`instant`)."""
    (tmp_path / "instant.yaml").write_text(yaml.safe_dump(INSTANT))
    return tmp_path
