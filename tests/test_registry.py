"""The generic registry: decorators fill it, a lookup finds the built-in files itself, unknown names are one line."""

import sys

import pytest

from msfusion_ray.errors import UserInputError
from msfusion_ray.registry import Registry


def test_register_names_a_class_and_keeps_a_function():
    registry = Registry("widget", "widget.name")

    @registry.register("round")
    class Round:
        pass

    @registry.register("square")
    def make_square():
        return "square"

    assert Round.name == "round" and registry.get("round") is Round
    assert registry["square"] is make_square and not hasattr(make_square, "name")
    assert registry.names() == ["round", "square"] and "round" in registry and "oval" not in registry


def test_an_unknown_name_is_one_line_on_the_config_field():
    registry = Registry("widget", "widget.name")
    registry.register("round")(type("Round", (), {}))
    with pytest.raises(UserInputError) as err:
        registry.get("oval")
    assert err.value.where == "widget.name"
    assert err.value.message == "unknown widget 'oval' (known: round)"


def test_a_lookup_imports_every_module_of_the_searched_packages(tmp_path, monkeypatch):
    package = tmp_path / "widgets_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from msfusion_ray.registry import Registry\n"
                                         "WIDGETS = Registry('widget', 'widget.name', ('widgets_pkg',))\n")
    (package / "round.py").write_text("from widgets_pkg import WIDGETS\n@WIDGETS.register('round')\nclass R: pass\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "oval.py").write_text("from widgets_pkg import WIDGETS\n"
                                             "@WIDGETS.register('oval')\ndef oval(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import widgets_pkg

        assert "widgets_pkg.round" not in sys.modules
        assert widgets_pkg.WIDGETS.names() == ["oval", "round"]
    finally:
        for name in [m for m in sys.modules if m.startswith("widgets_pkg")]:
            del sys.modules[name]


def test_every_kind_of_plug_in_is_found_by_the_one_registry_in_a_fresh_process():
    """Looked up before anything imported the plug-in files: each registry finds its own (no import lists)."""
    import json
    import subprocess

    code = ("import json\n"
            "from msfusion_ray.models.base import MODELS\n"
            "from msfusion_ray.runtime.engines.base import ENGINES\n"
            "from msfusion_ray.strategies import STRATEGIES\n"
            "from msfusion_ray.training.objective import OBJECTIVES\n"
            "from msfusion_ray.procedures.base import PROCEDURES\n"
            "print(json.dumps({r.kind: r.names() for r in (MODELS, ENGINES, STRATEGIES, OBJECTIVES, PROCEDURES)}))\n")
    found = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      timeout=120).stdout.splitlines()[-1])
    assert {"cnn", "resnet18", "resnet101", "transformer", "vgg", "vit"} <= set(found["model"])
    assert {"sync", "async", "pipeline"} <= set(found["engine"])
    assert {"fedavg", "heterofl", "msfusion", "fedbuff", "cos2p", "mpsl"} <= set(found["strategy"])
    assert {"msfusion_contrastive"} <= set(found["local objective"])
    assert {"standard", "cos2p", "pipeline_owner"} <= set(found["local procedure"])
