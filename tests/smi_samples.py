"""Recorded-style outputs of the vendor tools, for the parsers in ``m2a.metal.smi`` and ``nvidia``.

These are constructed samples, not captures from a real machine: their shape follows the tools'
own code and documentation (amd-smi's ``amdsmi_commands.py`` JSON with ``{"value", "unit"}``
objects and MB meaning MiB; rocm-smi's ``--json`` per-card keys; xpu-smi's user guide for
``discovery --json``, ``discovery -d N --json`` fields and the ``dump`` CSV), and their numbers are
those such boards report (an MI300X has no edge temperature sensor: amd-smi prints "N/A" there).
"""

from __future__ import annotations

import json

AMD_METRIC = json.dumps(
    [
        {
            "gpu": 0,
            "usage": {
                "gfx_activity": {"value": 87, "unit": "%"},
                "umc_activity": {"value": 41, "unit": "%"},
                "mm_activity": "N/A",
                "vcn_activity": [{"value": 0, "unit": "%"}, "N/A", "N/A", "N/A"],
            },
            "power": {
                "socket_power": {"value": 612, "unit": "W"},
                "gfx_voltage": "N/A",
                "soc_voltage": "N/A",
                "mem_voltage": "N/A",
                "throttle_status": "N/A",
                "power_management": "ENABLED",
            },
            "temperature": {
                "edge": "N/A",
                "hotspot": {"value": 71, "unit": "C"},
                "mem": {"value": 58, "unit": "C"},
            },
            "mem_usage": {
                "total_vram": {"value": 196592, "unit": "MB"},
                "used_vram": {"value": 151210, "unit": "MB"},
                "free_vram": {"value": 45382, "unit": "MB"},
                "total_gtt": {"value": 128730, "unit": "MB"},
                "used_gtt": {"value": 18, "unit": "MB"},
                "free_gtt": {"value": 128712, "unit": "MB"},
            },
        },
        {
            "gpu": 1,
            "usage": {"gfx_activity": {"value": 0, "unit": "%"}, "umc_activity": {"value": 0, "unit": "%"}},
            "power": {"socket_power": {"value": 131, "unit": "W"}, "power_management": "ENABLED"},
            "temperature": {"edge": "N/A", "hotspot": {"value": 38, "unit": "C"}, "mem": "N/A"},
            "mem_usage": {
                "total_vram": {"value": 196592, "unit": "MB"},
                "used_vram": {"value": 283, "unit": "MB"},
            },
        },
    ],
    indent=4,
)

AMD_STATIC = json.dumps(
    [
        {
            "gpu": i,
            "asic": {
                "market_name": "AMD Instinct MI300X",
                "vendor_id": "0x1002",
                "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
                "device_id": "0x74a1",
                "rev_id": "0x00",
                "asic_serial": f"0x9D2F6A1B0C3E4F5{i}",
                "oam_id": i,
                "num_compute_units": 304,
                "target_graphics_version": "gfx942",
            },
            "driver": {"name": "amdgpu", "version": "6.8.5"},
        }
        for i in range(2)
    ],
    indent=4,
)

AMD_LIST = json.dumps(
    [
        {
            "gpu": i,
            "bdf": f"0000:{5 + 0x10 * i:02x}:00.0",
            "uuid": f"4cff74a1-0000-1000-80e9-b1e3c8d6a2b{i}",
            "kfd_id": 45412 + i,
            "node_id": 2 + i,
            "partition_id": 0,
        }
        for i in range(2)
    ],
    indent=4,
)

# rocm-smi --showuse --showmemuse --showpower --showtemp --showmeminfo vram --showproductname
#          --showdriverversion --showuniqueid --json   (a workstation board, ROCm 6.x rocm-smi)
ROCM_SMI = json.dumps(
    {
        "card0": {
            "Temperature (Sensor edge) (C)": "45.0",
            "Temperature (Sensor junction) (C)": "48.0",
            "Temperature (Sensor memory) (C)": "52.0",
            "Average Graphics Package Power (W)": "61.0",
            "GPU use (%)": "23",
            "GPU Memory Allocated (VRAM%)": "12",
            "VRAM Total Memory (B)": "34342961152",
            "VRAM Total Used Memory (B)": "4123656192",
            "Card Series": "Navi 31 [Radeon Pro W7900]",
            "Card Model": "0x7448",
            "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
            "Card SKU": "APM7199",
            "Unique ID": "0x7f4e1c2a5b6d8e90",
        },
        "system": {"Driver version": "6.3.6"},
    },
    indent=4,
)

XPU_DISCOVERY = json.dumps(
    {
        "device_list": [
            {
                "device_id": i,
                "device_name": "Intel(R) Data Center GPU Max 1100",
                "device_type": "GPU",
                "pci_bdf_address": f"0000:{0x29 + i:02x}:00.0",
                "pci_device_id": "0xbda",
                "uuid": f"00000000-0000-00{0x29 + i:02x}-0000-000000000bda",
                "vendor_name": "Intel(R) Corporation",
            }
            for i in range(2)
        ]
    },
    indent=4,
)

XPU_DETAIL = {
    i: json.dumps(
        {
            "device_id": i,
            "device_name": "Intel(R) Data Center GPU Max 1100",
            "driver_version": "I915_23.10.72_PSB_231129.76",
            "memory_physical_size_byte": "51539607552",
            "uuid": f"00000000-0000-00{0x29 + i:02x}-0000-000000000bda",
        },
        indent=4,
    )
    for i in range(2)
}

# xpu-smi dump -d 0,1 -m 0,1,3,18 -n 1: device 1 cannot read its temperature without root (blank)
XPU_DUMP = (
    "Timestamp, DeviceId, GPU Utilization (%), GPU Power (W), GPU Core Temperature (Celsius Degree), "
    "GPU Memory Used (MiB)\n"
    "06:14:46.000,    0, 42.50, 187.31, 51.00, 20480.25\n"
    "06:14:46.000,    1,  0.00,  31.02,      ,    24.00\n"
)

# nvidia-smi --query-gpu=<nvidia.SMI_FIELDS> --format=csv,noheader,nounits on two H100 SXM
NVIDIA_SMI = "".join(
    f"{i}, NVIDIA H100 80GB HBM3, GPU-5c1d9a3e-8f7b-4a1c-9e2d-3b4a5c6d7e8{i}, 81559, {used}, {util}, "
    f"{watts}, {temp}, 570.124.06\n"
    for i, used, util, watts, temp in ((0, 61234, 97, 684.12, 63), (1, 4, 0, 71.45, 31))
)
