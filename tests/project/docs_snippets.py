"""The Python code blocks of README.md and docs/*.md: found, classified and run.

A block runs as shown, in a fresh interpreter, unless an HTML comment on the line
before its fence says otherwise (comments do not show on a rendered page):

- ``<!-- snippet: excerpt examples/flask_app.py -->``: every line of the block
  appears in that example, in order (``...`` lines stand for what was left out);
  the example itself is run by its own tests.
- ``<!-- snippet: run-with datafile, dispatcher -->``: run after the named
  preludes (PRELUDES below), which define what the prose around the block
  defines (``datafile_json``, ``dispatcher``, ``app``, ...).
- ``<!-- snippet: pytest conftest=flask-example -->``: run as a test file under
  pytest, with the named conftest (CONFTESTS below).
- ``<!-- snippet: fragment -->``: compiled only. Used for blocks that cannot run
  outside their host (a hook in a server's config file); it proves syntax only.
- ``then: EXPRESSION`` at the end of any run marker: evaluated after the block,
  in its namespace, and must not raise. A block that is one expression leaves
  its value in ``_``.

Without a marker, a block under a paragraph that says "from `examples/x.py`" is an
excerpt of that file, and a block that defines ``test_*`` functions runs under
pytest.

Django blocks run in a real Django: ``run-with django`` after ``django.setup()``
with the settings of ``examples/django_project``; ``run-with django-settings``
as a ``settings.py`` of ``django-admin startproject`` (``BASE_DIR`` is the
scratch directory), whose upper-case names then configure Django, with the
example project's URLs; ``run-with django-project`` with only that project on
the import path (an ``asgi.py`` sets its own settings module). Under pytest,
``conftest=django-example`` sets the example project up for pytest-django.

A run (``python -m tests.project.docs_snippets FILE LINE``, from a scratch directory
holding ``datafile.json``) happens with only 127.0.0.1 reachable: a local event
endpoint stands in for Optimizely's and for the devserver's default address (a
sender without ``endpoint=``, or with ``http://127.0.0.1:8765/v1/events``,
posts there), and the SDK key ``YOUR_SDK_KEY`` is served the example datafile.
Any other address a block tries to reach fails the run. After the block, an app
it defines (``app``, ``application`` or ``create_app()``: Flask, any other WSGI
app the package's middleware wraps, or any ASGI app) or, under Django, a view
``index`` it defines or the project its settings make, gets
``GET /?user=<b>snippet</b>``: it must answer without a server error, must not
echo the markup unescaped, and the events of a 200 must reach the endpoint.
Errors name the markdown file and line: the block is compiled with that file
name and its own line numbers.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATAFILE = ROOT / "examples" / "datafile.json"
DJANGO_PROJECT = ROOT / "examples" / "django_project"
SDK_KEY = "YOUR_SDK_KEY"
DEVSERVER_URL = "http://127.0.0.1:8765/v1/events"
SNIPPET_URL = "/?user=%3Cb%3Esnippet%3C/b%3E"

FENCE = re.compile(r"^(\s*)```\s*(\w*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
FROM_EXAMPLE = re.compile(r"[Ff]rom \[?`(examples/[\w./-]+)`")

PRELUDES: dict[str, str] = {
    "datafile": 'from pathlib import Path\ndatafile_json = Path("datafile.json").read_text()\n',
    "dispatcher": (
        "from pathlib import Path\n"
        "from optimizely_middleware import RequestScopedEventDispatcher, create_client\n"
        'datafile_json = Path("datafile.json").read_text()\n'
        "dispatcher = RequestScopedEventDispatcher()\n"
        "client = optimizely = create_client(dispatcher, datafile=datafile_json)\n"
    ),
    "wsgi-app": (
        "def application(environ, start_response):\n"
        '    start_response("200 OK", [("Content-Type", "text/plain")])\n'
        '    return [b"ok"]\n'
    ),
    "asgi-app": (
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        'app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])\n'
    ),
    "flask-app": "from flask import Flask\napp = Flask('snippet')\n",
    "job": (
        "from types import SimpleNamespace\n"
        'job = SimpleNamespace(user_id="user-1", amount_cents=4200)\n'
    ),
    "executor": (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "executor = ThreadPoolExecutor(max_workers=1)\n"
        'user = optimizely.create_user_context("user-1")\n'
        "def compute_recommendations(user):\n"
        '    return user.decide("new_checkout")\n'
    ),
    # The app module a gunicorn.conf.py hook imports.
    "myapp": (
        "import sys\n"
        "import types\n"
        "from optimizely_middleware import RequestScopedEventDispatcher\n"
        'myapp = types.ModuleType("myapp")\n'
        "myapp.dispatcher = RequestScopedEventDispatcher()\n"
        f"myapp.SDK_KEY = {SDK_KEY!r}\n"
        'sys.modules["myapp"] = myapp\n'
    ),
    # gunicorn.conf.py hooks of a Flask app: myapp.app, set up by the extension.
    "flask-myapp": (
        "import sys\n"
        "import types\n"
        "from flask import Flask\n"
        "from optimizely_middleware.flask import OptimizelyFlask\n"
        'myapp = types.ModuleType("myapp")\n'
        'myapp.app = Flask("myapp")\n'
        'myapp.app.config["OPTIMIZELY_DATAFILE_PATH"] = "datafile.json"\n'
        "OptimizelyFlask(myapp.app)\n"
        'sys.modules["myapp"] = myapp\n'
    ),
    "lambda": "def wsgi_handler(event, context):\n    return {'statusCode': 200}\n",
    # Django, set up with the example project's settings.
    "django": (
        "import os\n"
        "import sys\n"
        "import django\n"
        f"sys.path.insert(0, {str(DJANGO_PROJECT)!r})\n"
        'os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"\n'
        "django.setup()\n"
    ),
    # The top of the settings.py that `django-admin startproject mysite` writes.
    "django-settings": (
        "from pathlib import Path\n"
        '__file__ = str(Path("mysite", "settings.py").resolve())\n'
        "BASE_DIR = Path(__file__).resolve().parent.parent\n"
    ),
    # The example project importable, its settings not yet chosen (asgi.py does that).
    "django-project": f"import sys\nsys.path.insert(0, {str(DJANGO_PROJECT)!r})\n",
}

# What settings.py of `startproject` has besides a block run with django-settings, and
# the example project's URLs (its views: a decision on /, a conversion on POST /buy).
DJANGO_HOST_SETTINGS: dict[str, object] = {
    "SECRET_KEY": "only-for-the-snippet",
    "ALLOWED_HOSTS": ["localhost"],
    "ROOT_URLCONF": "mysite.urls",
    "INSTALLED_APPS": [],
    "DATABASES": {},
}

CONFTESTS: dict[str, str] = {
    "flask-example": (
        "import sys\n\nimport pytest\n\n"
        f"sys.path.insert(0, {str(ROOT / 'examples')!r})\n"
        "from flask_app import create_app\n\n\n"
        "@pytest.fixture\ndef client():\n    return create_app().test_client()\n"
    ),
    # What pytest-django needs to find the example project (a pytest.ini with
    # DJANGO_SETTINGS_MODULE and pythonpath does the same): its `client` is Django's.
    "django-example": (
        "import os\nimport sys\n\nimport django\n\n"
        f"sys.path.insert(0, {str(DJANGO_PROJECT)!r})\n"
        'os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"\n'
        "django.setup()\n"
    ),
}


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root, as written in messages
    line: int  # 1-based line of the block's first code line
    code: str
    kind: str  # "run", "excerpt", "pytest" or "fragment"
    args: tuple[str, ...] = ()
    then: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    relative = str(path.relative_to(ROOT))
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not FENCE.match(lines[end]):
            end += 1
        if fence.group(2) == "python":
            indent = len(fence.group(1))
            code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
            blocks.append(_classify(relative, index + 2, code, lines[:index]))
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in markdown_files() for block in python_blocks(path)]


def _classify(path: str, line: int, code: str, before: list[str]) -> Block:
    above = [text for text in before if text.strip()]
    marker = MARKER.match(above[-1]) if above else None
    if marker:
        spec, _, then = marker.group(1).partition("then:")
        kind, *args = spec.replace(",", " ").replace(";", " ").split()
        if kind not in ("run", "run-with", "excerpt", "pytest", "fragment"):
            raise ValueError(f"{path}:{line}: unknown snippet kind {kind!r}")
        return Block(path, line, code, kind.removesuffix("-with"), tuple(args), then.strip())
    paragraph: list[str] = []
    for text in reversed(before):
        if not text.strip():
            if paragraph:
                break
            continue
        paragraph.insert(0, text)
    source = FROM_EXAMPLE.search(" ".join(paragraph))
    if source:
        return Block(path, line, code, "excerpt", (source.group(1),))
    if re.search(r"^def test_\w+\(", code, re.M):
        return Block(path, line, code, "pytest")
    return Block(path, line, code, "run")


def excerpt_mismatch(block: Block) -> str | None:
    """None when every line of the block appears in its example, in order."""
    (source,) = block.args
    example = (ROOT / source).read_text().splitlines()
    position = 0
    for number, line in enumerate(block.code.splitlines(), start=block.line):
        if not line.strip() or line.strip() == "...":
            continue
        try:
            position = example.index(line, position) + 1
        except ValueError:
            return f"{block.path}:{number}: {source} has no line {line!r} after line {position}"
    return None


def numbered_source(block: Block) -> str:
    """The block's code, pushed down so that its line numbers are the markdown's."""
    return "\n" * (block.line - 1) + block.code


# --- the run, in its own interpreter -------------------------------------------------


def _guard_network() -> list[str]:
    """Refuse every address but this machine's; return the list of attempts."""
    import socket

    attempts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host: object, *args: object, **kwargs: object) -> object:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1", "None"):
            attempts.append(name)
            raise OSError(f"a documentation snippet tried to reach {name}")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[call-overload]

    socket.getaddrinfo = local_only  # type: ignore[assignment]
    return attempts


def _serve_example_datafile_for_the_placeholder_key() -> None:
    from optimizely.config_manager import PollingConfigManager

    datafile = DATAFILE.read_text()
    real_fetch = PollingConfigManager.fetch_datafile

    def fetch(self: PollingConfigManager) -> None:
        if SDK_KEY in self.datafile_url:
            self._set_config(datafile)
        else:
            real_fetch(self)

    PollingConfigManager.fetch_datafile = fetch  # type: ignore[method-assign]


def _send_default_events_to(url: str) -> None:
    """Senders without an endpoint, or with the devserver's default one, post to ``url``."""
    import functools

    from optimizely_middleware.delivery.sender import EventSender

    real_init = EventSender.__init__

    @functools.wraps(real_init)
    def init(self: EventSender, endpoint: str | None = None, **kwargs: object) -> None:
        if endpoint in (None, DEVSERVER_URL):
            endpoint = url
        real_init(self, endpoint, **kwargs)  # type: ignore[arg-type]

    EventSender.__init__ = init  # type: ignore[method-assign]


def _app_in(namespace: dict[str, object]) -> object | None:
    for name in ("app", "application"):
        if name in namespace:
            return namespace[name]
    factory = namespace.get("create_app")
    if callable(factory):
        import inspect

        params = inspect.signature(factory).parameters.values()
        if all(p.default is not p.empty for p in params):
            return factory()
    return None


def _exercise(app: object) -> tuple[int, str, str] | None:
    """GET /?user=<markup> through the app's own test client; None for other objects."""
    import inspect

    from flask import Flask

    from optimizely_middleware import OptimizelyWSGIMiddleware

    if isinstance(app, (Flask, OptimizelyWSGIMiddleware)):
        from werkzeug.test import Client

        with Client(app).get(SNIPPET_URL) as response:
            return response.status_code, response.content_type or "", response.get_data(True)
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__):
        from starlette.testclient import TestClient  # any ASGI app

        base_url = "http://localhost"  # a host Django's ALLOWED_HOSTS take
        with TestClient(app, base_url=base_url, raise_server_exceptions=False) as client:  # type: ignore[arg-type]
            answer = client.get(SNIPPET_URL)
        return answer.status_code, answer.headers.get("content-type", ""), answer.text
    return None


def _configure_django(namespace: dict[str, object]) -> None:
    """Configure Django with a settings.py block's upper-case names."""
    import django
    from django.conf import settings

    sys.path.insert(0, str(DJANGO_PROJECT))
    names = {name: value for name, value in namespace.items() if name.isupper()}
    settings.configure(**{**DJANGO_HOST_SETTINGS, **names})
    django.setup()


def _exercise_django(view: object) -> tuple[int, str, str]:
    """GET /?user=<markup> through Django's test Client: ``view`` at /, or the project's URLs."""
    import types

    from django.conf import settings
    from django.test import Client, override_settings

    urlconf = settings.ROOT_URLCONF
    if callable(view):
        from django.urls import path

        module = types.ModuleType("snippet_urls")
        module.urlpatterns = [path("", view)]  # type: ignore[attr-defined]
        sys.modules[module.__name__] = module
        urlconf = module.__name__
    with override_settings(ROOT_URLCONF=urlconf):
        response = Client(HTTP_HOST="localhost").get(SNIPPET_URL)
    return response.status_code, response.get("Content-Type", ""), response.content.decode()


def _flush_every_dispatcher() -> tuple[int, int]:
    """Flush every dispatcher the block made; (events handed over, events delivered)."""
    import gc

    from optimizely_middleware import RequestScopedEventDispatcher

    handed_over = delivered = 0
    for obj in gc.get_objects():
        # type(), not isinstance(): that reads __class__, which sets up Django's lazy objects.
        if issubclass(type(obj), RequestScopedEventDispatcher):
            obj.flush(timeout=10)
            stats = obj.stats()
            handed_over += stats["handed_over"]
            delivered += stats["delivered_events"]
    return handed_over, delivered


def run(block: Block) -> None:
    """Run one block here, with the guards above; raise AssertionError on a failure."""
    import warnings

    from optimizely_middleware.devserver import DevServer

    attempts = _guard_network()
    _serve_example_datafile_for_the_placeholder_key()
    warnings.simplefilter("default")
    with DevServer(port=0) as server:
        _send_default_events_to(server.url)
        namespace: dict[str, object] = {"__name__": "__snippet__"}
        for name in block.args:
            exec(compile(PRELUDES[name], f"<prelude {name}>", "exec"), namespace)
        tree = ast.parse(numbered_source(block), block.path)
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
            expression = ast.Expression(tree.body[0].value)
            namespace["_"] = eval(compile(expression, block.path, "eval"), namespace)
        else:
            exec(compile(tree, block.path, "exec"), namespace)
        if "django-settings" in block.args:
            _configure_django(namespace)
        if block.then:
            exec(compile(block.then, f"{block.where} then", "exec"), namespace)
        app = _app_in(namespace)
        answer = _exercise(app) if app is not None else None
        view = namespace.get("index")
        if answer is None and (callable(view) or "django-settings" in block.args):
            answer = _exercise_django(view)
        handed_over, delivered = _flush_every_dispatcher()
        assert delivered == handed_over, (
            f"{block.where}: {handed_over - delivered} of {handed_over} events were not delivered"
        )
        if answer is not None:
            status, content_type, body = answer
            assert status < 500, f"{block.where}: GET / answered {status}:\n{body[:2000]}"
            if "html" in content_type:
                assert "<b>snippet</b>" not in body, (
                    f"{block.where}: the page echoes the user's markup unescaped: {body!r}"
                )
            if status == 200 and re.search(r"\.(decide|track_event)\(", block.code):
                assert handed_over > 0, f"{block.where}: GET / answered 200 and sent no event"
            print(f"GET / -> {status}")
        print(f"{delivered} event(s) delivered to the local endpoint")
    assert not attempts, f"{block.where}: tried to reach {sorted(set(attempts))}"


def main(argv: list[str]) -> int:
    path, line = argv[0], int(argv[1])
    (block,) = [b for b in python_blocks(ROOT / path) if b.line == line]
    run(block)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
