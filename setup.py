"""Builds adadelta_fused and, when it can, its compiled extension adadelta_fused._C.

The C++ CPU kernel is built whenever torch and a C++ compiler are present; the CUDA kernel as well when
torch is a CUDA build (torch.version.cuda) and a CUDA toolkit is found. There may be no GPU at all: the
decision never asks torch.cuda.is_available(). A failed optional part never fails the install: the
package then runs on its other backends, and adadelta_fused.available_backends() says why.

Environment variables:
  ADADELTA_FUSED_BUILD_EXT=0      build no extension (pure Python: the reference and Triton backends)
  ADADELTA_FUSED_BUILD_CUDA=auto  "1" forces the CUDA sources (a failure is an error), "0" skips them
  ADADELTA_FUSED_STRICT_BUILD=1   any build failure is an error (CI sets it)
  TORCH_CUDA_ARCH_LIST            GPU targets; default "8.0;9.0;10.0" (A100, H100/H200, B200)
  CUDA_HOME                       the toolkit; found from nvcc when unset (see find_cuda_home)
"""

from __future__ import annotations

import glob
import os
import shutil
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0;10.0"


def env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def find_cuda_home() -> str | None:
    """The toolkit folder whose lib64 holds libcudart.

    torch guesses dirname(dirname(which nvcc)), which is wrong when nvcc on PATH is a wrapper script in
    /usr/local/bin; so try the usual candidates and keep the first real toolkit.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            # A wrapper script names the real compiler; `nvcc --version` does not, so read the script.
            with open(nvcc, errors="ignore") as script:
                for word in script.read().split():
                    if word.endswith("/bin/nvcc"):
                        candidates.append(os.path.dirname(os.path.dirname(word)))
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and glob.glob(
            os.path.join(home, "lib64", "libcudart.so*")
        ):
            return home
    return None


def cuda_decision(torch) -> tuple[bool, str]:
    """(build the CUDA sources?, why)."""
    mode = env_flag("ADADELTA_FUSED_BUILD_CUDA", "auto")
    if mode in ("0", "false", "no"):
        return False, "ADADELTA_FUSED_BUILD_CUDA=0"
    if not glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        reason = "no CUDA sources in csrc/cuda"
    elif torch.version.cuda is None:
        reason = "torch is not a CUDA build"
    elif os.environ.get("CUDA_HOME") is None:
        reason = "no CUDA toolkit (nvcc with lib64/libcudart) found"
    else:
        return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), toolkit {os.environ['CUDA_HOME']}"
    if mode in ("1", "true", "yes"):
        raise RuntimeError(f"ADADELTA_FUSED_BUILD_CUDA=1 but {reason}")
    return False, reason


def loaded_libstdcxx() -> list[str]:
    """The shared libstdc++ torch runs with, as a link input ([] where /proc/self/maps tells of none).

    Linked ahead of the compiler driver's own -lstdc++, it resolves every libstdc++ symbol of _C.so, so no
    copy of libstdc++'s archive gets in. A compiler that links that archive (the H200 image's, 2026-12-04)
    gives _C.so a second set of iostreams whose locale ids are not those of the libstdc++ torch loaded: a
    number formatted into a check's message then crashed there (SIGSEGV in codecvt) and, with
    -static-libstdc++ here, printed nothing ("grads has "). The file torch loaded, not whichever libstdc++
    the linker finds first: that one may be newer than the one that will be loaded, and fail at import.
    """
    try:
        with open("/proc/self/maps") as maps:
            # address, perms, offset, dev, inode, then the path, which may hold spaces (or end in " (deleted)",
            # a file no longer there: isfile drops it).
            fields = [line.rstrip("\n").split(maxsplit=5) for line in maps]
    except OSError:
        return []
    paths = {f[5] for f in fields if len(f) == 6 and "/libstdc++.so" in f[5]}
    return [path for path in sorted(paths) if os.path.isfile(path)][:1]


def cuda_include_dirs() -> list[str]:
    """Headers some toolkits lack (e.g. cusparse.h for ATen/cuda) ship in torch's nvidia pip packages."""
    dirs = []
    try:
        import nvidia

        for base in nvidia.__path__:
            dirs += [d for d in glob.glob(os.path.join(base, "*", "include")) if os.path.isdir(d)]
    except ImportError:
        pass
    return dirs


def extensions():
    if env_flag("ADADELTA_FUSED_BUILD_EXT", "1") in ("0", "false", "no"):
        print("adadelta_fused: ADADELTA_FUSED_BUILD_EXT=0, building no extension")
        return [], {}
    if "CUDA_HOME" not in os.environ:
        home = find_cuda_home()
        if home:
            os.environ["CUDA_HOME"] = home  # before torch.utils.cpp_extension reads it at import
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as error:
        warnings.warn(f"adadelta_fused: torch is not importable at build time ({error}); no extension")
        return [], {}

    with_cuda, why = cuda_decision(torch)
    print(f"adadelta_fused: CUDA kernel {'enabled' if with_cuda else 'disabled'}: {why}")
    cpu_sources = [
        "csrc/ops.cpp", "csrc/op_host.cpp", "csrc/python_calls.cpp", "csrc/sparse_host.cpp",
        "csrc/cpu/adadelta_cpu.cpp", "csrc/cpu/steps_cpu.cpp", "csrc/cpu/sparse_cpu.cpp",
        "csrc/cpu/quantized_cpu.cpp", "csrc/cpu/float_lanes.cpp",
    ]
    # -fno-math-errno and -fno-trapping-math let GCC vectorize sqrt and if-convert selects around float
    # ops (without them the update loop stays scalar: 7.8 GB/s instead of memory speed); neither changes a
    # result. -ffp-contract=off: the math header writes every fma torch uses explicitly and no other, so
    # the CPU kernel matches the reference bit for bit.
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-std=c++20", "-fopenmp"]
    # -fopenmp: at::parallel_for is inline code in ATen's headers (ParallelOpenMP.h) whose `omp parallel`
    # pragma is compiled into the extension; without the flag the CPU kernel runs on one thread (29 ms
    # for 32 Mi fp32 elements on this 2-core machine, whatever torch.get_num_threads() says). The
    # libgomp.so.1 it links is the one torch has already loaded, so there is one OpenMP runtime.
    common = dict(
        name="adadelta_fused._C", include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp", *loaded_libstdcxx()],
    )

    def cpu_extension():
        return CppExtension(sources=cpu_sources, extra_compile_args={"cxx": cxx_flags}, **common)

    if not with_cuda:
        return [cpu_extension()], {"build_ext": optional_build(BuildExtension, cpu_extension, None)}

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    nvcc_flags = [
        "-O3",
        "-std=c++20",
        "--fmad=false",  # a*b+c rounded twice, as on the CPU: the CUDA kernel matches the reference bits
        "-Xptxas=-v",  # registers, spills and stack per kernel, into the build log
        "-DADADELTA_FUSED_WITH_CUDA",
    ]
    cuda_ext = CUDAExtension(
        sources=cpu_sources + sorted(glob.glob("csrc/cuda/*.cu")),
        extra_compile_args={"cxx": cxx_flags + ["-DADADELTA_FUSED_WITH_CUDA"], "nvcc": nvcc_flags},
        **{**common, "include_dirs": common["include_dirs"] + cuda_include_dirs()},
    )
    forced = env_flag("ADADELTA_FUSED_BUILD_CUDA", "auto") in ("1", "true", "yes")
    return [cuda_ext], {"build_ext": optional_build(BuildExtension, cpu_extension, None if forced else "cpu")}


def optional_build(base, cpu_extension, cuda_fallback):
    """A build_ext that degrades instead of failing: CUDA+CPU, then CPU only, then no extension."""
    strict = env_flag("ADADELTA_FUSED_STRICT_BUILD", "0") in ("1", "true", "yes")

    class OptionalBuildExtension(base.with_options(use_ninja=shutil.which("ninja") is not None)):
        def build_extension(self, ext):
            try:
                return super().build_extension(ext)
            except Exception as error:
                if strict:
                    raise
                has_cuda = any(source.endswith(".cu") for source in ext.sources)
                if has_cuda and cuda_fallback is None:
                    raise  # ADADELTA_FUSED_BUILD_CUDA=1: the CUDA kernel was demanded
                warnings.warn(f"adadelta_fused: building {ext.name} failed ({error})")
            if has_cuda:
                warnings.warn("adadelta_fused: retrying without the CUDA sources")
                try:
                    return super().build_extension(cpu_extension())
                except Exception as error:
                    warnings.warn(f"adadelta_fused: CPU-only build failed too ({error})")
            warnings.warn("adadelta_fused: no compiled extension; the reference backend will be used")

    return OptionalBuildExtension


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
