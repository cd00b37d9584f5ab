"""Planning a Ray run on the driver without holding a model.

With ``executor="ray"`` the points run in Ray tasks that load the model themselves, so the
driver must not hold a copy of its own while they run: on a GPU node that copy would sit on
cuda:0 outside Ray's accounting, beside a task. The chapters therefore plan first
(``plan_ray``: what a worker resolves, from the probe task, before any model is loaded),
validate their grids on a weightless model (``models.weightless``: the architecture on the meta
device, no weights read), run the tasks, and only then load the driver's model with the
workers' runtime (``load_planned``) to read the points and compute what runs on the driver.
"""

from __future__ import annotations

import torch

from layerlab.core.compute import distributed
from layerlab.core.model import models


def plan_ray(model: str, device: str = "auto", dtype: str = "auto", ray_address: str | None = None,
             workers: int | None = None) -> dict:
    """Connect to Ray and return the runtime the workers will run ``model`` on (``models.runtime``'s
    dict; on CUDA with the GPU's name), from one probe task and before any model is loaded;
    refused at once when this driver could not load that runtime afterwards (``check_driver``)."""
    distributed.validate_executor("ray", ray_address)
    runtime = distributed.plan("ray", device, dtype, workers, None, model)[0]
    check_driver(runtime)
    return runtime


def check_driver(runtime: dict) -> None:
    """Refuse, before any task starts, a plan whose points this driver could not read: the keys
    name the workers' dtype, device type and GPU, so the driver must load the model on the same
    kind of device (a CUDA GPU of the same model) to find them."""
    if runtime["device"] != "cuda":
        return
    options = ("Run the notebook on a node with that GPU; or fill the results store from any machine "
               "(no GPU needed on the driver) with `layerlab.laser.distributed.run_laser_points(...)` or "
               "`layerlab.painters.distributed.run_painters_specs(...)` and read it where the workers' runtime exists; or pass device='cpu' "
               "to run the tasks on CPUs.")
    if not torch.cuda.is_available():
        raise ValueError(f"device, dtype, executor: the Ray workers run on CUDA ({runtime.get('gpu')}, "
                         f"{runtime['dtype']}), but this driver has no CUDA GPU, so it cannot load the model "
                         f"with the workers' runtime to read their points. {options}")
    here = torch.cuda.get_device_name(0)
    if here != runtime.get("gpu"):
        raise ValueError(f"device: the Ray workers run on {runtime.get('gpu')}, this driver on {here}: "
                         f"bfloat16/float16 round-off differs between GPU models, so its keys differ. {options}")


def skeleton(model: str, runtime: dict):
    """``weightless(model)`` in the planned runtime's dtype, carrying the plan
    (``layerlab_planned``, for ``machine.runtime_label``)."""
    lm, tok = models.weightless(model, runtime["dtype"])
    lm.layerlab_planned = runtime
    return lm, tok


def load_planned(model: str, runtime: dict):
    """(model, tokenizer) loaded here with the workers' device type and dtype, after their
    tasks ran (each task's worker exits and gives its GPU memory back); refused when its
    runtime is not the planned one (``distributed.check_runtime``)."""
    lm, tok = models.load(model, dtype=runtime["dtype"], device=runtime["device"])
    distributed.check_runtime(runtime, lm)
    return lm, tok
