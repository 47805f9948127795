"""Build archipel's compiled request path (see ``src/archipel/serving/_native/__init__.py``) in place, into
``src/archipel/serving/_native/``: Cython compiles copies of ``http1.py`` and ``gateway.py`` (with their ``.pxd``
types) and ``fastlane.pyx``, each stamped with the SHA-256 of all the sources.

    python scripts/build_native.py           # build if the sources changed since the last build; exit 0
    python scripts/build_native.py --force   # build anyway

Without Cython or a C compiler it says so and exits 0: archipel then runs the same code as Python. Under
``CI=true`` or ``ARCHIPEL_REQUIRE_NATIVE=1`` a failed build exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVING = ROOT / "src" / "archipel" / "serving"
MODULES = {"http1": ("http1.py", "http1.pxd"), "gateway": ("gateway.py", "gateway.pxd"),
           "fastlane": ("_native/fastlane.pyx",)}  # fmt: skip


def _sha() -> str:
    spec = importlib.util.spec_from_file_location("_archipel_native", SERVING / "_native" / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sources_sha256(SERVING)


def built_sha(out: Path) -> str | None:
    stamp = out / "BUILT_FROM"
    return stamp.read_text().strip() if stamp.exists() else None


def build(out: Path = SERVING / "_native", force: bool = False) -> bool:
    """Compile into ``out``; True if the twins there are now built from the current sources."""
    sha = _sha()
    if not force and built_sha(out) == sha and all(any(out.glob(f"{m}.*.so")) for m in MODULES):
        return True
    try:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as exc:
        print(
            f"build_native: {exc.name} is not installed: archipel's request path runs as Python",
            file=sys.stderr,
        )
        return False
    with tempfile.TemporaryDirectory(prefix="archipel-native-") as tmp:
        package = Path(tmp) / "archipel" / "serving" / "_native"
        package.mkdir(parents=True)
        for init in (package.parent.parent, package.parent, package):
            (init / "__init__.py").write_text("")
        extensions = []
        for name, files in MODULES.items():
            for file in files:
                text = (SERVING / file).read_text()
                if file.endswith((".py", ".pyx")):
                    text += f'\n_SOURCES_SHA256 = "{sha}"\n'
                (package / Path(file).name).write_text(text)
            extensions.append(
                Extension(f"archipel.serving._native.{name}", [str(package / Path(files[0]).name)])
            )
        cwd = os.getcwd()
        os.chdir(tmp)  # module names follow the folders from here
        try:
            modules = cythonize(extensions, quiet=True, language_level=3,
                                compiler_directives={"binding": False, "embedsignature": False})  # fmt: skip
            dist = Distribution({"name": "archipel-native", "ext_modules": modules})
            command = dist.get_command_obj("build_ext")
            command.build_lib, command.build_temp = str(Path(tmp) / "lib"), str(Path(tmp) / "temp")
            command.ensure_finalized()
            command.run()
        except Exception as exc:  # a missing compiler, a Cython error: the Python code still runs
            print(
                f"build_native: the build failed ({exc}): archipel's request path runs as Python",
                file=sys.stderr,
            )
            return False
        finally:
            os.chdir(cwd)
        for built in (Path(tmp) / "lib" / "archipel" / "serving" / "_native").glob("*.so"):
            for old in out.glob(f"{built.name.split('.')[0]}.*.so"):
                old.unlink()
            staged = out / f".{built.name}.tmp"
            shutil.copyfile(built, staged)
            os.replace(staged, out / built.name)
    (out / "BUILT_FROM").write_text(sha + "\n")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build even if the sources did not change")
    args = parser.parse_args()
    ok = build(force=args.force)
    print(f"build_native: {'compiled' if ok else 'not compiled'}")
    required = os.environ.get("ARCHIPEL_REQUIRE_NATIVE") == "1" or os.environ.get("CI") == "true"
    return 0 if ok or not required else 1


if __name__ == "__main__":
    sys.exit(main())
