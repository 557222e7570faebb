"""The Python client users generate from our OpenAPI file, built and imported for tests.

``openapi-python-client`` turns the committed document into a package of ``attrs`` models and
one module per operation (``sync``, ``sync_detailed``, ...). Module names come from the
operationIds, which may be renamed, so tests find an operation's module by its method and
path, as written in the document, instead.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# The name the generator derives from the document's title, "edge-automl".
PACKAGE = "edge_automl_client"
# No post hooks: the default ones run ruff over the output, which is slow, needs ruff on
# PATH and changes nothing a test can observe.
# Binary responses (images, exports) are plain files to a client: the generator reads
# them as bytes only for application/octet-stream, so map our media types onto it.
GENERATOR_CONFIG = """post_hooks: []
content_type_overrides:
  image/*: application/octet-stream
  image/jpeg: application/octet-stream
  image/png: application/octet-stream
  text/csv: application/octet-stream
  application/jsonl: application/octet-stream
  application/zip: application/octet-stream
  text/plain: application/octet-stream
"""

_METHOD = re.compile(r'"method":\s*"(\w+)"')
_URL = re.compile(r'"url":\s*"([^"]*)"')
_PATH_PARAMETER = re.compile(r"\{[^}]*\}")


def generate_command(document: Path, package_dir: Path, config: Path) -> list[str]:
    """The generator run: a bare importable package (no project metadata), warnings fatal."""
    return [
        sys.executable,
        "-m",
        "openapi_python_client",
        "generate",
        "--path",
        str(document),
        "--output-path",
        str(package_dir),
        "--meta",
        "none",
        "--config",
        str(config),
        "--fail-on-warning",
    ]


def _path_shape(path: str) -> str:
    """``/v1/operations/{operation_id}:cancel`` -> ``/v1/operations/{}:cancel``."""
    return _PATH_PARAMETER.sub("{}", path)


@dataclass
class GeneratedClient:
    """A generated client package, importable while ``root`` is on ``sys.path``."""

    root: Path
    package: ModuleType = field(init=False)
    models: ModuleType = field(init=False)
    _endpoints: dict[tuple[str, str], str] = field(init=False, default_factory=dict)

    def load(self) -> None:
        sys.path.insert(0, str(self.root))
        importlib.invalidate_caches()
        self.package = importlib.import_module(PACKAGE)
        self.models = importlib.import_module(f"{PACKAGE}.models")
        for module_file in sorted((self.root / PACKAGE / "api").glob("*/*.py")):
            source = module_file.read_text()
            method, url = _METHOD.search(source), _URL.search(source)
            if method and url:
                module = ".".join(module_file.relative_to(self.root).with_suffix("").parts)
                self._endpoints[(method[1].upper(), _path_shape(url[1]))] = module

    def unload(self) -> None:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        if str(self.root) in sys.path:
            sys.path.remove(str(self.root))

    def endpoint(self, method: str, path: str) -> ModuleType:
        """The module for one operation: ``endpoint("GET", "/v1/operations/{id}").sync(...)``."""
        module = self._endpoints.get((method.upper(), _path_shape(path)))
        if module is None:
            known = sorted(f"{m} {p}" for m, p in self._endpoints)
            raise LookupError(f"the generated client has no {method} {path}; it has {known}")
        return importlib.import_module(module)

    def client(self, base_url: str, **kwargs: Any) -> Any:
        """An unauthenticated ``Client``; undocumented status codes raise."""
        return self.package.Client(base_url=base_url, raise_on_unexpected_status=True, **kwargs)


def generate_client(document: Path, workdir: Path) -> GeneratedClient:
    """Generate the client for ``document`` under ``workdir`` and import it."""
    config = workdir / "openapi-python-client.yaml"
    config.write_text(GENERATOR_CONFIG)
    command = generate_command(document, workdir / PACKAGE, config)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    _import_unset_where_used(workdir / PACKAGE)
    generated = GeneratedClient(root=workdir)
    generated.load()
    return generated


def _import_unset_where_used(package: Path) -> None:
    """Work around openapi-python-client 0.29: an operation with two request bodies (our
    import takes multipart or JSON) is typed ``... | Unset`` without importing Unset."""
    for module in (package / "api").rglob("*.py"):
        code = module.read_text()
        if "| Unset = UNSET" in code and "import Response, UNSET\n" in code:
            module.write_text(
                code.replace("import Response, UNSET\n", "import Response, UNSET, Unset\n")
            )
