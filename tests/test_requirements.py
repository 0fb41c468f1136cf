"""requirements.txt says what the code needs: floors that match the APIs used, test-only
packages out of the runtime install, one (headless) OpenCV."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _reqs(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            m = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line)
            out[m.group(1).lower()] = m.group(2)
    return out


def _floor(spec: str) -> tuple[int, ...]:
    m = re.search(r">=\s*([0-9.]+)", spec)
    return tuple(int(x) for x in m.group(1).split(".")) if m else (0,)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_floors_match_the_apis_the_code_uses():
    run = _reqs("requirements.txt")
    code = "\n".join(p.read_text() for p in ROOT.glob("*.py"))
    if "fused=" in code:                       # fused Adam on the CPU: torch 2.4
        assert _floor(run["torch"]) >= (2, 4)
    if "pydicom.pixels" in code:               # pydicom 3
        assert _floor(run["pydicom"]) >= (3, 0)
    if "np.trapezoid" in code:                 # NumPy 2
        assert _floor(run["numpy"]) >= (2, 0)


def test_runtime_needs_no_test_only_package_and_one_headless_opencv():
    run, test = _reqs("requirements.txt"), _reqs("requirements-test.txt")
    runtime_imports = set().union(*(_imports(p) for p in ROOT.glob("*.py")))
    for pkg, module in (("pytest", "pytest"), ("scikit-learn", "sklearn"),
                        ("grad-cam", "pytorch_grad_cam"), ("playwright", "playwright")):
        assert pkg not in run, f"{pkg} is test-only"
        assert pkg in test
        assert module not in runtime_imports, f"a runtime module imports {module}"
    assert "opencv-python-headless" in run and "opencv-python" not in run | test
    assert _floor(test["grad-cam"]) >= (1, 5, 7)  # earlier releases pull the GUI opencv-python
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"\.installed: requirements\.txt\n", make)  # make run: runtime only
