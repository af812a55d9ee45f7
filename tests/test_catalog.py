import pytest

from unetkit.catalog import Catalog
from unetkit.errors import ConfigError


def test_register_get_and_refusals():
    cat: Catalog = Catalog("widget")
    cat.register("a")(1)
    assert cat.get("a") == 1 and "a" in cat and cat.names() == ["a"]
    with pytest.raises(ValueError, match="already registered"):
        cat.register("a")(2)
    with pytest.raises(ConfigError, match="unknown widget 'b'; choose one of: a"):
        cat.get("b")
