"""Does a refiner keep what the kernel refinement gives? Mean PSNR on 8 vtest frames with ImageNet-C severity 3, the
Wiener deconvolution with the network's kernel (refine0) or the refined one (refine10), with and without a refiner.

    python bench/refiner_probe.py REFINER.pt
"""
import glob
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deblur.data.blur_synth import apply_kernel, imagenet_c_kernel  # noqa: E402
from deblur.kernel_deblur import KernelDeblurrer  # noqa: E402
from deblur.kernel_refine import RefineConfig  # noqa: E402

torch.set_num_threads(1)
files = sorted(glob.glob("data/eval/vtest/*.jpg"))[::20][:8]
imgs = [cv2.imread(f) for f in files]
rng = np.random.default_rng(0)
blurred = [apply_kernel(im, imagenet_c_kernel(3, float(rng.uniform(0, 180)), centered=True)) for im in imgs]
def psnr(a, b): return 10*np.log10(255**2/np.mean((a.astype(float)-b.astype(float))**2))
R7 = sys.argv[1] if len(sys.argv) > 1 else "runs/deblur/refiner_res_dsc/ref7_s4000.pt"
variants = {
 "blurred": None,
 "wiener refine10": dict(refiner="none"),
 "wiener refine0": dict(refiner="none", refine=RefineConfig(iters=0)),
 "refiner torch refine10": dict(refiner=R7, runtime="torch"),
 "refiner openvino refine10": dict(refiner=R7, runtime="openvino"),
 "refiner torch refine0": dict(refiner=R7, runtime="torch", refine=RefineConfig(iters=0)),
}
for name, kw in variants.items():
    if kw is None:
        out = blurred
    else:
        kd = KernelDeblurrer(device="cpu", threads=1, **kw)
        out = [kd([b])[0] for b in blurred]
    print(f"{name:24s} PSNR {np.mean([psnr(o, s) for o, s in zip(out, imgs)]):.2f}", flush=True)
