"""Make lava-nc 0.10.0 importable on Python 3.11, 3.12 and 3.13.

lava-nc declares ``Requires-Python <3.11``. On 3.11 to 3.13 exactly one
thing breaks: ``lava/magma/compiler/var_model.py`` gives dataclass fields a
mutable default (``x: ByteEncoder = ByteEncoder()``), which ``dataclasses``
rejects at import time since 3.11. This script rewrites those eight fields to
``field(default_factory=ByteEncoder)``.

It is idempotent (a patched file is left alone) and refuses to touch a file
whose content it does not recognise, so a different lava-nc release fails
loudly instead of being half-patched.

Usage: ``python scripts/patch_lava.py`` with the target environment's Python.
"""
import importlib.util
import pathlib
import re
import sys

OLD_FIELD = re.compile(r"^(    \w+): ByteEncoder = ByteEncoder\(\)$", re.M)
NEW_FIELD = r"\1: ByteEncoder = field(default_factory=ByteEncoder)"
OLD_IMPORT = "from dataclasses import dataclass, InitVar\n"
NEW_IMPORT = "from dataclasses import dataclass, InitVar, field\n"
FIELDS = 8  # x, y, p (CoreEncoder); x, y, z (ChipEncoder); hi, lo (AxonEncoder)


def var_model_path() -> pathlib.Path:
    spec = importlib.util.find_spec("lava.magma")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("patch_lava: lava-nc is not installed in this environment")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    return root / "compiler" / "var_model.py"


def patch(text: str) -> str:
    """Return the patched source, or raise ValueError if it is unknown."""
    n_old = len(OLD_FIELD.findall(text))
    n_new = text.count("field(default_factory=ByteEncoder)")
    if n_old == 0 and n_new == FIELDS and NEW_IMPORT in text:
        return text  # already patched
    if n_old != FIELDS or n_new != 0 or text.count(OLD_IMPORT) != 1:
        raise ValueError(
            f"unrecognised var_model.py: {n_old} mutable ByteEncoder "
            f"defaults and {n_new} patched ones (expected {FIELDS} and 0); "
            "is this lava-nc 0.10.0?")
    return OLD_FIELD.sub(NEW_FIELD, text).replace(OLD_IMPORT, NEW_IMPORT)


def main() -> None:
    path = var_model_path()
    text = path.read_text()
    try:
        new = patch(text)
    except ValueError as err:
        sys.exit(f"patch_lava: {path}: {err}")
    if new == text:
        print(f"patch_lava: {path} already patched")
    else:
        path.write_text(new)
        print(f"patch_lava: patched {path}")


if __name__ == "__main__":
    main()
