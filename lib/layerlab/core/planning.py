"""Planning a Ray run on the driver without holding a model.

With ``executor="ray"`` the points run in Ray tasks that load the model themselves, so the
driver must not hold a copy of its own while they run: on a GPU node that copy would sit on
cuda:0 outside Ray's accounting, beside a task. The chapters therefore plan first
(``plan_ray``: what a worker resolves, from the probe task, before any model is loaded),
validate their grids on a weightless model (``weightless``: the architecture on the meta
device, no weights read), run the tasks, and only then load the driver's model with the
workers' runtime (``load_planned``) to read the points and compute what runs on the driver.
"""

from __future__ import annotations

import torch

from . import distributed, models


def weightless(name_or_path: str, dtype: str | torch.dtype):
    """(model, tokenizer): ``name_or_path``'s architecture built from its config on the meta
    device in ``dtype`` (a concrete dtype: "auto" depends on the device that will compute),
    with ``layerlab_weights`` set as ``models.load`` sets it, and the real tokenizer. No
    weights are read and the runner is not checked: it is for validation and planning
    (``arch``, ``rank.validate``, parameter counts), and cannot compute."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if not isinstance(dtype, torch.dtype) and dtype not in models.DTYPES:
        raise ValueError(f"dtype: {dtype!r} for a weightless model must be one of {', '.join(models.DTYPES)}")
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else models.DTYPES[dtype]
    source = models.resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise models._config_error(name_or_path, source, err) from None
    auto = AutoModel if config.model_type in models.ENCODER_TYPES else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, dtype=torch_dtype).eval()
    model.layerlab_weights = models.fingerprint(name_or_path)
    return model, load_tokenizer(source)


def load_tokenizer(source: str):
    """A resolved model's tokenizer with a pad token, right-padded (as the runner and scorers take)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def plan_ray(model: str, device: str = "auto", dtype: str = "auto", ray_address: str | None = None,
             workers: int | None = None) -> dict:
    """Connect to Ray and return the runtime the workers will run ``model`` on (``models.runtime``'s
    dict; on CUDA with the GPU's name), from one probe task and before any model is loaded;
    refused at once when this driver could not load that runtime afterwards (``check_driver``)."""
    distributed.validate_executor("ray", ray_address)
    runtime = distributed._plan("ray", device, dtype, workers, None, model)[0]
    check_driver(runtime)
    return runtime


def check_driver(runtime: dict) -> None:
    """Refuse, before any task starts, a plan whose points this driver could not read: the keys
    name the workers' dtype, device type and GPU, so the driver must load the model on the same
    kind of device (a CUDA GPU of the same model) to find them."""
    if runtime["device"] != "cuda":
        return
    options = ("Run the notebook on a node with that GPU; or fill the results store from any machine "
               "(no GPU needed on the driver) with `layerlab.core.distributed.run_laser_points(...)` or "
               "`run_painters_specs(...)` and read it where the workers' runtime exists; or pass device='cpu' "
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
    lm, tok = weightless(model, runtime["dtype"])
    lm.layerlab_planned = runtime
    return lm, tok


def load_planned(model: str, runtime: dict):
    """(model, tokenizer) loaded here with the workers' device type and dtype, after their
    tasks ran (each task's worker exits and gives its GPU memory back); refused when its
    runtime is not the planned one (``distributed.check_runtime``)."""
    lm, tok = models.load(model, dtype=runtime["dtype"], device=runtime["device"])
    distributed.check_runtime(runtime, lm)
    return lm, tok
