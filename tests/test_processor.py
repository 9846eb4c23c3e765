from medscale.scaling.run.processor import parse_cpuinfo, processor

SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
vendor_id\t: GenuineIntel
model name\t: something else
"""
MILAN = """vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2 avx2 fma
"""


def test_intel_with_amx_is_named_with_its_extensions_and_bf16():
    cpu = parse_cpuinfo(SPR)
    assert cpu.vendor == "intel" and cpu.model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert cpu.isa == ("AVX2", "FMA", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AMX", "AMX-BF16", "AMX-INT8")
    assert cpu.has_bf16
    assert cpu.kind == "intel-xeon-platinum-8481c"  # no clock speed, file-name safe


def test_amd_without_bf16_and_the_kind_drops_the_core_count():
    cpu = parse_cpuinfo(MILAN)
    assert (cpu.vendor, cpu.isa, cpu.has_bf16) == ("amd", ("AVX2", "FMA"), False)
    assert cpu.kind == "amd-epyc-7b13"
    assert cpu.describe() == "AMD EPYC 7B13 64-Core Processor (AVX2, FMA)"


def test_this_machine_has_a_name_and_a_kind():
    cpu = processor()
    assert cpu.model and cpu.kind and "/" not in cpu.kind
