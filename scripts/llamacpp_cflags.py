"""Compiler flags for building llama.cpp on this machine (`make install` passes them through CMAKE_ARGS).

llama.cpp compiles for the CPU it is built on (-march=native). A virtual machine may list AMX in cpuid while its
kernel does not let a process use the tile registers (arch_prctl's XCOMP_SUPP lacks XTILEDATA): gcc then turns AMX
on and llama.cpp dies of SIGILL at its first matrix product (`tilezero` in libggml-cpu). There, AMX is turned off;
elsewhere nothing is printed and the build is llama.cpp's own.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

ARCH_GET_XCOMP_SUPP = 0x1022
SYS_ARCH_PRCTL = 158  # x86-64's syscall number
XFEATURE_XTILEDATA = 18
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def amx_listed() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def amx_usable() -> bool:
    supported = ctypes.c_ulong(0)
    if ctypes.CDLL(None, use_errno=True).syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_SUPP, ctypes.byref(supported)) != 0:
        return False
    return bool(supported.value >> XFEATURE_XTILEDATA & 1)


if __name__ == "__main__":
    if platform.system() == "Linux" and platform.machine() == "x86_64" and amx_listed() and not amx_usable():
        print(NO_AMX)
