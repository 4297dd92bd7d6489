"""The registry: register, look up, clear errors for unknown and duplicate names."""
import pytest

from vissl_lite.registry import Registry, RegistryError


def test_register_get_build_and_list():
    reg = Registry("widget_test")

    @reg.register("Square")
    def square(x):
        """Squares a number."""
        return x * x

    assert reg.get("square") is square and reg.build("SQUARE", 3) == 9
    assert reg.names() == ["square"] and "square" in reg and len(reg) == 1
    assert reg.describe("square") == "Squares a number."


def test_unknown_name_suggests_and_lists():
    reg = Registry("gadget_test")
    reg.register("resnet18")(lambda: 1)
    reg.register("resnet50")(lambda: 2)
    with pytest.raises(RegistryError) as e:
        reg.get("resnet19")
    msg = str(e.value)
    assert "unknown gadget_test 'resnet19'" in msg and "Did you mean" in msg
    assert "resnet18, resnet50" in msg


def test_duplicate_registration_is_refused():
    reg = Registry("thing_test")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("a")(lambda: 2)
