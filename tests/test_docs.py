"""The front door and the site stay whole: the README is short and its links resolve, and the
site names every method, command and public entry point (``mkdocs build --strict`` in .ci/run
checks the site's own links and API references)."""
import re
from pathlib import Path

import relprop
from relprop import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def site_text() -> str:
    return "\n".join(p.read_text() for p in DOCS.rglob("*.md"))


def test_the_readme_is_a_short_front_door_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 15_000
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


def test_the_site_names_every_method_command_and_public_name():
    text = site_text()
    methods_page = (DOCS / "methods.md").read_text()
    missing = [m for m in relprop.methods() if f"`{m}`" not in methods_page]
    assert not missing, f"docs/methods.md does not describe {missing}"
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for module in (cli.explain, cli.compare, cli.evaluate, cli.serve):
        module.add_parser(sub)
    cli.listing.add_parsers(sub)
    commands = set(sub.choices)
    assert {"explain", "compare", "evaluate", "serve", "models", "methods"} <= commands
    for command in commands:
        assert f"relprop {command}" in text, command
    reference = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)\s*$", reference, re.M))
    for name in relprop.__all__:
        module = getattr(getattr(relprop, name), "__module__", None)
        assert {f"relprop.{name}", f"{module}.{name}", module} & documented, name
