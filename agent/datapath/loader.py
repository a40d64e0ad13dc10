"""Compiling and loading bpf/*.c with BCC: the only module of the project that imports bcc.

It runs in the short-lived compiler process (compiler.py), never in the agent: importing bcc maps
libbcc and LLVM/clang (about 100 MB) into the process, and BCC keeps the compiled module.

The header and the program files are concatenated into one translation unit (with #line markers so
compiler messages name the real file and line), which defines every map once. The result is a
`LoadedPrograms`: program fds, map fds and the compiled map layouts, with `close()` releasing them.
Attaching is not done here (see attachments.py): BCC's own attach is the legacy kind that
outlives the process.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
from pathlib import Path
from typing import Any

from agent.datapath import libbpf
from agent.datapath.errors import DatapathError
from agent.datapath.layout import CompiledMap, layout_of
from agent.datapath.programs import HEADER, PROGRAMS

log = logging.getLogger(__name__)


def import_bcc() -> Any:
    try:
        import bcc  # noqa: PLC0415 - imported lazily so a missing BCC is a DatapathError at start()
    except ImportError as exc:
        raise DatapathError(
            f"BCC is not importable from this Python ({exc}): install python3-bpfcc: run make install "
            "(it installs python3-bpfcc and links it into the .venv)") from exc
    return bcc


def translation_unit(bpf_dir: Path) -> str:
    """The header and every program file as one C text."""
    parts = []
    for name in (HEADER, *(spec.source for spec in PROGRAMS)):
        path = bpf_dir / name
        try:
            text = path.read_text()
        except OSError as exc:
            raise DatapathError(f"cannot read BPF source {path}: {exc}") from exc
        parts.append(f'#line 1 "{path}"\n{text}')
    return "\n".join(parts)


class LoadedPrograms:
    """Programs and maps compiled and loaded by BCC, not attached. Owns their fds until close()."""

    def __init__(self, bpf: Any, prog_fds: dict[str, int], map_fds: dict[str, int],
                 maps: dict[str, CompiledMap]) -> None:
        self._bpf = bpf
        self.prog_fds = prog_fds
        self.map_fds = map_fds
        self.maps = maps

    def close(self) -> None:
        if self._bpf is None:
            return
        bpf, self._bpf = self._bpf, None
        bpf.cleanup()  # closes the program and map fds
        atexit.unregister(bpf.cleanup)  # BCC registered it; drop the reference it holds


def load(bpf_dir: Path, *, cflags: list[str] | None = None, lib: libbpf.Libbpf) -> LoadedPrograms:
    """Compile bpf_dir's programs with BCC and load them into the kernel (verifier included),
    creating their maps."""
    bcc = import_bcc()
    text = translation_unit(bpf_dir)
    flags = [f"-I{bpf_dir}", *(cflags or [])]
    try:
        bpf = bcc.BPF(text=text.encode(), cflags=flags)
    except Exception as exc:  # BCC raises a bare Exception; the compiler output went to stderr
        release = os.uname().release
        raise DatapathError(
            f"BCC could not compile {bpf_dir}/*.c ({exc}); see the compiler's output for its messages. "
            f"If they mention missing headers, check the kernel headers at /lib/modules/{release}/build "
            f"and /lib/modules/{release}/source: run make install") from exc
    try:
        prog_fds: dict[str, int] = {}
        for spec in PROGRAMS:
            try:
                fn = bpf.load_func(spec.name.encode(), spec.prog_type, attach_type=spec.attach_type)
            except Exception as exc:  # BCC raises a bare Exception; the verifier log went to stderr
                raise DatapathError(f"the kernel refused BPF program {spec.name} from {spec.source} "
                                    f"({exc}); the verifier log is in the compiler's output") from exc
            prog_fds[spec.name] = fn.fd
        map_fds: dict[str, int] = {}
        maps: dict[str, CompiledMap] = {}
        for name in bpf_map_names(bpf):
            table = bpf.get_table(name.encode())
            info = lib.map_info(table.map_fd)
            map_fds[name] = table.map_fd
            maps[name] = CompiledMap(name=name, key=layout_of(table.Key),
                                     value=layout_of(table.Leaf),
                                     kernel_key_size=info.key_size, kernel_value_size=info.value_size)
    except BaseException:
        bpf.cleanup()
        atexit.unregister(bpf.cleanup)
        raise
    return LoadedPrograms(bpf, prog_fds, map_fds, maps)


def bpf_map_names(bpf: Any) -> list[str]:
    """Names of every map BCC created for this module (from libbcc's module API, through our own
    ctypes handle so BCC's bindings are left as they are)."""
    lib = ctypes.CDLL(bpf_libbcc_path())
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_name.restype = ctypes.c_char_p
    return [lib.bpf_table_name(bpf.module, i).decode() for i in range(lib.bpf_num_tables(bpf.module))]


def bpf_libbcc_path() -> str:
    from bcc import libbcc  # noqa: PLC0415

    return libbcc.lib._name
