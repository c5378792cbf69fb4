"""Check a built image against requirements.lock: it holds exactly the lock's packages, and `c2l versions` run
inside it reports the lock's versions.

    .venv/bin/python containers/image_check.py IMAGE [--engine podman]

Run by `make test-image` before the pipeline runs in the image. Prints `c2l versions` as the image reports it,
one line per mismatch, and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"

# the distributions in the image's venv, as name==version lines (no pip or uv in the image)
FREEZE = ("import importlib.metadata as m\n"
          "for d in m.distributions(): print(f\"{d.metadata['Name']}=={d.version}\")")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line)
            if not m:
                raise SystemExit(f"image_check: unexpected line {line!r}")
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def run_in_image(engine: str, image: str, *cmd: str) -> str:
    result = subprocess.run([engine, "run", "--rm", image, *cmd], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"image_check: `{' '.join(cmd)}` failed in {image} (exit {result.returncode}):\n"
                         f"{result.stderr.strip()}")
    return result.stdout


def compare(lock: dict[str, str], installed: dict[str, str], versions: dict[str, str]) -> list[str]:
    """Mismatches between the lock, the image's distributions and what `c2l versions` reports."""
    diffs = [f"in the lock, not in the image: {n}=={lock[n]}" for n in sorted(set(lock) - set(installed))]
    diffs += [f"in the image, not in the lock: {n}=={installed[n]}" for n in sorted(set(installed) - set(lock))]
    diffs += [f"{n}: image {installed[n]}, lock {lock[n]}" for n in sorted(set(lock) & set(installed))
              if installed[n] != lock[n]]
    for name, version in versions.items():
        key = canonical(name)
        if key == "cuda-runtime":
            key = next((k for k in lock if k.startswith("nvidia-cuda-runtime")), key)
        if key in lock and lock[key] != str(version):
            diffs.append(f"c2l versions: {name} {version}, lock {lock[key]}")
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--engine", default="podman")
    ap.add_argument("--lock", type=Path, default=None,
                    help="the lock the image was built from (default: requirements-cu12.lock for a -cu12 tag, "
                         "else requirements.lock)")
    a = ap.parse_args()
    lock_path = a.lock or (REPO / "requirements-cu12.lock" if a.image.endswith("-cu12") else LOCK)
    lock = parse_pins(lock_path.read_text())
    installed = parse_pins(run_in_image(a.engine, a.image, "python", "-c", FREEZE))
    versions_text = run_in_image(a.engine, a.image, "c2l", "versions")
    print(versions_text, end="")
    versions = next(iter(yaml.safe_load(versions_text).values()))
    versions.pop("c2lnf", None)
    diffs = compare(lock, installed, versions)
    for d in diffs:
        print(d)
    print(f"image_check: {a.image}: {len(installed)} packages, {len(lock)} in the lock, {len(diffs)} difference(s)")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
