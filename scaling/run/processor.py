"""Which processor this is: model name, vendor and the instruction-set extensions that decide
which CPU kernels are fastest (AVX2/FMA, AVX-512, AVX512-BF16, AMX). A CPU speed figure holds only
for the processor it was measured on, so benchmarks and run records name it with this.
"""
from __future__ import annotations

import dataclasses
import platform
import re
from pathlib import Path

# /proc/cpuinfo flag -> the name a reader knows it by
ISA_FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI",
             "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


@dataclasses.dataclass(frozen=True)
class Processor:
    model: str            # "AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    vendor: str           # "amd" | "intel" | "arm" | the raw vendor id
    isa: tuple[str, ...]  # the extensions of ISA_FLAGS this processor has, in that order

    @property
    def has_bf16(self) -> bool:
        """bfloat16 matmuls in hardware (AVX512-BF16 or AMX), not emulated through float32."""
        return "AVX512-BF16" in self.isa or "AMX-BF16" in self.isa

    @property
    def kind(self) -> str:
        """A file-name-safe name for the processor kind: vendor and model, no clock speed."""
        name = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$|\d+-core", " ", self.model.lower())
        slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"
        return slug if slug.startswith(self.vendor) else f"{self.vendor}-{slug}"

    def describe(self) -> str:
        return f"{self.model} ({', '.join(self.isa) or 'no AVX2'})"


def _cpuinfo_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            fields.setdefault(key, value)  # the first processor's entry
    return fields


def parse_cpuinfo(text: str) -> Processor:
    fields = _cpuinfo_fields(text)
    model = fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine()
    vendor_id = fields.get("vendor_id", "")
    vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor_id, vendor_id.lower() or platform.machine())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    return Processor(model=model, vendor=vendor, isa=tuple(name for flag, name in ISA_FLAGS.items() if flag in flags))


def processor() -> Processor:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux
        return Processor(model=platform.processor() or platform.machine(), vendor=platform.machine(), isa=())
