"""The deblurrer's hot-path choices, each against what it replaced, in one run on this machine.

  fft     forward + inverse real 2-D FFT of a frame padded by 41 px a side, at the old FFT size (smallest
          2^a 3^b 5^c, odd allowed) and today's (``deblur.deconv._fast_len``: a >= 2, b <= 4, c <= 2)
  luma    RGB -> luma as a weighted sum over the channel axis (old) and as three scaled adds
          (``deblur.kernel_deblur.luma``), on a contiguous and on a channels_last (pixel-interleaved) frame
  filter  the Wiener filter applied to a spectrum: conj(K) / (|K|^2 + lam |L|^2) with the real denominator
          promoted to complex and |K|^2 reduced over the real view (old), and from real and imaginary parts (now)
  pad     BORDER_REFLECT padding by 41 px a side and on to the FFT size: two whole-image gathers (old), and a copy
          plus mirrored strips (``deblur.deconv._reflect_pad``)
  malloc  ``(x + 1) * 0.5`` on a frame, in a fresh process with glibc's default allocator policy
          (BLURDET_MALLOC=default) and with ``runtime.keep_large_allocations()``

Median milliseconds, torch's CPU kernels, --threads threads (the pipeline's deblur thread has 1); fft and luma run
with keep_large_allocations(), as the deblurrer does.

    python bench/hotpath.py                  # 640x360, 1280x720, 1920x1080; 1 thread
    python bench/hotpath.py --threads 2 --sizes 1280x720
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deblur.deconv import _fast_len, _reflect_index, _reflect_pad  # noqa: E402
from deblur.kernel_deblur import _GREY, luma  # noqa: E402
from runtime import keep_large_allocations  # noqa: E402
from machine import cpu_flags, cpu_model  # noqa: E402  (bench/machine.py, beside this script)

_MALLOC = """
import sys, time, torch
from runtime import keep_large_allocations
keep_large_allocations()
torch.set_num_threads(int(sys.argv[1]))
x = torch.rand(1, 3, int(sys.argv[2]), int(sys.argv[3]))
t = []
for _ in range(30):
    t0 = time.perf_counter(); (x + 1.0) * 0.5; t.append(time.perf_counter() - t0)
print(sorted(t)[len(t) // 2] * 1e3)
"""


def odd_allowed_len(n: int) -> int:
    """The FFT size before: smallest 2^a 3^b 5^c >= n."""
    m = max(n, 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def median_ms(fn, n: int = 25) -> float:
    fn()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["640x360", "1280x720", "1920x1080"], metavar="WxH")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_large_allocations()  # fft and luma are compared under the allocator policy the deblurrer runs with
    print(f"{cpu_model()} ({' '.join(f for f in cpu_flags() if 'bf16' in f or f == 'avx512f') or 'no AVX-512'}), "
          f"{args.threads} thread(s), torch {torch.__version__}\n")
    print("| size | step | before | ms | now | ms |\n|---|---|---|---|---|---|")
    grey = torch.tensor(_GREY).view(1, 3, 1, 1)
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        for name, fast in (("old", odd_allowed_len), ("new", _fast_len)):
            hp, wp = fast(h + 82), fast(w + 82)
            z = torch.rand(1, 1, hp, wp)
            ms = median_ms(lambda: torch.fft.irfft2(torch.fft.rfft2(z), s=(hp, wp)))
            if name == "old":
                old = (f"{hp}x{wp}", ms)
        print(f"| {size} | fft forward + inverse | {old[0]} | {old[1]:.2f} | {hp}x{wp} | {ms:.2f} |")
        k_f = torch.randn(1, hp, wp // 2 + 1, dtype=torch.complex64)
        y_f = torch.randn(1, 1, hp, wp // 2 + 1, dtype=torch.complex64)
        lap2, lam = torch.rand(hp, wp // 2 + 1), torch.tensor([0.01])

        def filter_old():
            power = torch.view_as_real(k_f).square().sum(-1)
            return y_f * (k_f.conj() / torch.addcmul(power, lam[:, None, None], lap2))[:, None]

        def filter_new():
            inv = torch.addcmul(torch.addcmul(k_f.real.square(), k_f.imag, k_f.imag), lam[:, None, None], lap2)
            inv = inv.reciprocal_()
            return y_f * torch.complex(k_f.real * inv, k_f.imag * inv.neg())[:, None]

        print(f"| {size} | Wiener filter on the spectrum | complex division | {median_ms(filter_old):.2f} | "
              f"real and imaginary parts | {median_ms(filter_new):.2f} |")
        y = torch.rand(1, 1, h, w)
        pads = (41, hp - h - 41, 41, wp - w - 41)

        def pad_old():
            g = y.index_select(-2, _reflect_index(h, pads[0], pads[1], y.device))
            return g.index_select(-1, _reflect_index(w, pads[2], pads[3], y.device))

        print(f"| {size} | reflect padding | two gathers | {median_ms(pad_old):.2f} | copy and strips | "
              f"{median_ms(lambda: _reflect_pad(y, *pads)):.2f} |")
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.rand(1, 3, h, w).contiguous(memory_format=layout)
            before = median_ms(lambda: (x * grey).sum(1, keepdim=True))
            now = median_ms(lambda: luma(x))
            tag = "channels_last" if layout is torch.channels_last else "contiguous"
            print(f"| {size} | luma, {tag} | weighted sum | {before:.2f} | scaled adds | {now:.2f} |")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        got = [float(subprocess.run([sys.executable, "-c", _MALLOC, str(args.threads), str(h), str(w)], check=True,
                                    capture_output=True, text=True, env={**env, **extra}).stdout)
               for extra in ({"BLURDET_MALLOC": "default"}, {})]
        print(f"| {size} | (x + 1) * 0.5 | glibc default | {got[0]:.2f} | keep_large_allocations | {got[1]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
