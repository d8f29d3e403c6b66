"""The pack installed as ComfyUI-Manager installs it: the Manager's own command line (`cm-cli`, from
PyPI's comfyui-manager, in .cache/venv-manager) clones the repository from a git URL into a fresh
ComfyUI 0.3.75, and that ComfyUI, started as a user starts it, loads the pack and registers every node.

Offline: the repository is served as a bare repository on file://localhost/... (cm-cli takes a URL
without a host, file:///..., for a node name), and the Manager and ComfyUI run behind a proxy that
refuses every connection.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from elite_test_pack.comfy_server import running_server
from elite_test_pack.workflows import EXAMPLES

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ELITE_CACHE", REPO / ".cache"))  # where scripts/bootstrap.sh installs
MANAGER_VENV = CACHE / "venv-manager"  # comfyui-manager over the first venv's packages (ComfyUI 0.3.75's)
COMFYUI = CACHE / "comfyui"
PACK = "elite-comfyui"  # the repository's name, which the Manager names the pack's folder after
NO_NETWORK = {key: "http://127.0.0.1:9" for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}

# The Manager's venv belongs to the first ComfyUI; what it installs does not depend on the one under test.
pytestmark = pytest.mark.first_comfyui_only


def _skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _git(*args: str, env: dict | None = None, stdin: str | None = None) -> str:
    done = subprocess.run(["git", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout.strip()


def publish_working_tree(bare: Path) -> None:
    """A bare repository whose `main` is one commit of the working tree as it is: the files git
    tracks and the new ones it does not ignore, what the Manager clones once they are committed and
    pushed. The repository's own index, branches and objects are not touched."""
    _git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    env = {**os.environ, "GIT_INDEX_FILE": str(bare / "publish-index"), "GIT_AUTHOR_NAME": "test",
           "GIT_AUTHOR_EMAIL": "test@localhost", "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
    top = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == REPO:
        listed = _git("-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    else:  # a copy without its .git: every file .gitignore does not name
        listed = _git("--git-dir", str(bare), "--work-tree", str(REPO), "ls-files", "-z", "--others", "--exclude-standard")
    # .cache may be a symbolic link to a shared one, which .gitignore's folder pattern does not match
    files = [name for name in listed.split("\0")
             if name and name.split("/")[0] != ".cache" and os.path.lexists(REPO / name)]
    tree_args = ["--literal-pathspecs", "--git-dir", str(bare), "--work-tree", str(REPO)]
    _git(*tree_args, "add", "--force", "--pathspec-from-file=-", "--pathspec-file-nul", env=env, stdin="\0".join(files))
    commit = _git(*tree_args, "commit-tree", _git(*tree_args, "write-tree", env=env), "-m", "the pack", env=env)
    _git("--git-dir", str(bare), "update-ref", "refs/heads/main", commit)


def fresh_comfyui(dest: Path) -> Path:
    """ComfyUI 0.3.75 as it comes: no custom node packs, no user folder, nothing run in it yet."""
    def left_out(folder: str, names: list[str]) -> set[str]:
        run_made = {"user", "output", "temp"} if Path(folder) == COMFYUI else set()
        return {name for name in names if name in run_made or name == "__pycache__" or name.startswith(".elite-")}

    shutil.copytree(COMFYUI, dest, ignore=left_out)
    return dest


@pytest.fixture(scope="module")
def manager_install(tmp_path_factory):
    """The pack installed by `cm-cli install file://localhost/.../elite-comfyui.git` into a fresh
    ComfyUI; returns that ComfyUI's folder and cm-cli's output."""
    cm_cli = MANAGER_VENV / "bin" / "cm-cli"
    if not cm_cli.is_file():
        _skip_or_fail(f"ComfyUI-Manager's cm-cli is not installed at {cm_cli} (make test installs it)")
    if not (COMFYUI / "main.py").is_file() or not shutil.which("git"):
        _skip_or_fail(f"the Manager install test needs git and ComfyUI 0.3.75 at {COMFYUI} (make test installs it)")
    root = tmp_path_factory.mktemp("manager-install")
    bare = root / f"{PACK}.git"
    publish_working_tree(bare)
    comfy = fresh_comfyui(root / "ComfyUI")
    env = {**os.environ, **NO_NETWORK, "COMFYUI_PATH": str(comfy)}
    env.pop("COMFYUI_FOLDERS_BASE_PATH", None)
    done = subprocess.run([str(cm_cli), "install", f"file://localhost{bare}"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return comfy, output


@pytest.fixture(scope="module")
def installed_server(manager_install):
    """The fresh ComfyUI started with the Manager's Python (what the Manager installed is there)."""
    comfy, _ = manager_install
    log_path = comfy / "comfyui.log"
    # started as a user starts it: ComfyUI's own folders, the Manager's Python, no network
    with running_server(comfy, None, log_path, timeout=180, python=MANAGER_VENV / "bin" / "python",
                        env={**os.environ, **NO_NETWORK}, ready_path="/system_stats") as url:
        yield url, log_path


def test_the_manager_clones_the_pack_into_custom_nodes(manager_install):
    comfy, output = manager_install
    assert "[INSTALLED]" in output and "ERROR" not in output, output[-4000:]
    pack = comfy / "custom_nodes" / PACK
    assert (pack / "__init__.py").is_file() and (pack / "nodes").is_dir() and (pack / "web" / "docs").is_dir()
    # a git checkout the Manager can update later, at the commit it was given
    bare = next(comfy.parent.glob("*.git"))
    assert _git("-C", str(pack), "rev-parse", "HEAD") == _git("--git-dir", str(bare), "rev-parse", "main")
    assert not (pack / ".cache").exists()


def test_the_installed_pack_loads_and_registers_every_node(installed_server):
    from comfyui_elite.nodes import ELITE_NODES

    url, log_path = installed_server
    log = log_path.read_text()
    assert f"custom_nodes/{PACK}" in log and "IMPORT FAILED" not in log, log[-4000:]
    info = requests.get(f"{url}/object_info", timeout=60).json()
    registered = {node_id for node_id, node in info.items() if node["python_module"] == f"custom_nodes.{PACK}"}
    assert registered == {node.define_schema().node_id for node in ELITE_NODES}


def test_the_installed_pack_serves_its_help_pages_and_templates(installed_server):
    url, _ = installed_server
    page = requests.get(f"{url}/extensions/{PACK}/docs/ELITEEncoder.md", timeout=10)
    assert page.status_code == 200 and page.text.startswith("# ")
    templates = requests.get(f"{url}/workflow_templates", timeout=10).json()
    assert sorted(templates.get(PACK, [])) == sorted(EXAMPLES)
