"""Build step of the Dockerfile (run by the image's own Python, no shell): make the executable
and compile the standard library modules it uses, so that every start skips compiling.

    python3 -I -S image/build.py kubernetes_entrypoint.py OUT

writes, under OUT (copied over / by the next stage):
- usr/local/bin/kubernetes-entrypoint: one executable file, a zip application behind the
  shebang `#!/usr/bin/python3 -IS`, holding the source as __main__.py and its bytecode as
  __main__.pyc. Python runs the bytecode when its version matches, else the source; so the file
  still works lifted into another image by `COPY --from=`.
- the __pycache__/*.pyc of every standard library module the entrypoint can import (distroless
  ships none, and its user 65534 could not write them), checked against their sources' hashes.
"""

import ast
import importlib
import importlib.util
import io
import os
import py_compile
import sys
import sysconfig
import zipfile

SHEBANG = b"#!/usr/bin/python3 -IS\n"
EXECUTABLE = "usr/local/bin/kubernetes-entrypoint"
# What is imported without an import statement in the source: by Python itself to run a zip
# application, and by the codec lookup when ssl encodes the server's host name.
RUNTIME_MODULES = ("runpy", "zipimport", "encodings.idna")


def imported_modules(source):
    """Every module the source imports, at the top or inside a function (imported lazily)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def write_executable(source, out):
    """The zip application; its bytecode carries no check against the source beside it."""
    code = compile(source, "/" + EXECUTABLE, "exec", dont_inherit=True, optimize=0)
    bytecode = importlib._bootstrap_external._code_to_hash_pyc(
        code, importlib.util.source_hash(source), checked=False)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("__main__.py", source)
        z.writestr("__main__.pyc", bytecode)
    path = os.path.join(out, EXECUTABLE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(SHEBANG + archive.getvalue())
    os.chmod(path, 0o755)


def compile_standard_library(module_names, out):
    """The bytecode of those modules and of all they import in turn, under OUT."""
    for name in sorted(module_names):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a module of another platform
    stdlib = sysconfig.get_paths()["stdlib"] + os.sep
    count = 0
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None) or ""
        if source.startswith(stdlib) and source.endswith(".py"):
            cache = importlib.util.cache_from_source(source)
            py_compile.compile(source, cfile=out + cache, dfile=source, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            count += 1
    return count


def main(script, out):
    with open(script, "rb") as f:
        source = f.read()
    write_executable(source, out)
    count = compile_standard_library(imported_modules(source) | set(RUNTIME_MODULES), out)
    print("%s and %d standard library modules compiled" % (EXECUTABLE, count))


if __name__ == "__main__":
    main(*sys.argv[1:])
