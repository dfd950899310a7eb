"""cffi API-mode builder of mwcomms._native, the C data plane bound into Python.

The C sources and the declarations exposed to Python are gathered by component: each part of
the tree keeps its own `*.c` files and `*.cdef` files declaring what Python may call. Only
`ffi` and `lib` leave the built module; the typed Python layers wrap them.
"""
import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
PARTS = ["xen", "mwcomms/engine", "ins/engine"]  # folders holding C of the data plane


def _rel(path):
    return os.path.relpath(path, TOP)


def _gather():
    """A part's C joins the extension once the part has a cdef file: that is its statement
    that its sources are complete and link. Until then its work in progress stays out."""
    sources, cdefs = [], []
    for part in PARTS:
        folder = os.path.join(TOP, part)
        parts_cdefs = sorted(glob.glob(os.path.join(folder, "*.cdef")))
        if not parts_cdefs:
            continue
        sources += sorted(_rel(p) for p in glob.glob(os.path.join(folder, "*.c")))
        for cdef in parts_cdefs:
            with open(cdef) as f:
                cdefs.append(f.read())
    return sources, "\n".join(cdefs)


_sources, _cdef = _gather()

ffibuilder = FFI()
ffibuilder.cdef(_cdef)
ffibuilder.set_source(
    "mwcomms._native",
    "#include \"mwcomms/native.h\"\n",
    sources=_sources,
    include_dirs=[os.path.join("xen", "include"), os.path.join("ins", "engine"),
                  os.path.join("mwcomms", "include"), os.path.join("mwcomms", "engine")],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fvisibility=hidden"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
