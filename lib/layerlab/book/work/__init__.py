"""What each chapter of a book plan computes, counted without running anything, and the
time that work takes at a stated device speed (issue #28 §4).

    python -m layerlab.book.work --profile full                 # one H100, stated speed
    python -m layerlab.book.work --profile full --device cpu    # this CPU (calibrates first)

``plan_work`` resolves every (technique, model, parameters) of a plan (``build.PLANS``) with
the chapter's own profile config (``laser.sweep.profile_config``, ``prune.curve.profile_config``,
``painters.run.config``, ``sokoban.chapter.profile_config``, the Beyond modules'
``profile_config``) and walks the chapter's loops as its code runs them, counting:

    block_tokens   tokens x transformer blocks of inference passes (a sublayer counts as
                   its share of the block's parameters)
    attn_pairs     (query, key) pairs x blocks of those passes (causal: T (T + 1) / 2 per
                   sequence of T tokens), for the attention term
    head_tokens    positions that go through the output head (vocab x hidden)
    train_tokens   steps x batch x seq_len of healing / agent training, and the block, pair
                   and head counts of those steps (``train_*``), counted at 3x a forward pass
    svds           matrix shapes (m, n) of the SVDs on the model's device, with counts
    host_svds      float64 singular-value computations on the CPU (``rank.singular_values``)
    block_calls    block forward calls (batches x blocks): the launch-latency floor on a GPU

Items come from the data through the library's own loaders (``laser.tasks.build_task``,
``evaluation._prepared_rows`` for the lm-eval tasks, ``data.load``); tokens per item are
measured on ``SAMPLE`` sampled items with the model's tokenizer when it can be read without
converting a model (``Context.tokenizer``), else estimated as characters / 4 (each row says
which). Model shapes come from config.json only (``model_shape``; no weights).

What is not known before a run is assumed, and said (``ASSUMPTIONS``): where a criterion's
chosen block starts, which reduction validation picks, that every benchmark is above chance
(so the Painters variants run on all of them), generation lengths. Points one chapter stores
and a later chapter of the same plan reads (the prune chapter's points in the healing
section, LASER's sweep in the spectrum section) are counted once (``Context.seen``).

``flops`` turns counts into FLOPs; ``work_seconds`` into seconds on a ``Device``: an
estimate from counted work and a stated device speed, not a measurement.

The modules: ``shapes`` (``Shape``, ``model_shape``, ``KNOWN_SHAPES``), ``counts`` (``Work``,
``Rows``, ``run_pass``, ``train_steps``, ``EditCost`` and the edit costs, SVD FLOPs and the
``SVDLedger``), ``inputs`` (``Context``, tokens per item from the data loaders, lm-eval's
requests and rows), ``assumptions`` (``ASSUMPTIONS`` and the assumed picks), ``engines`` (the
prefix cache, prefix-shared evaluation and generation, counted), one module per paper's
chapters (``laser`` with Sokoban, ``prune``, ``painters`` with the encoder, ``beyond``:
criteria, sublayers, healing, spectrum), ``plan`` (``CHAPTERS``, ``chapter_work``,
``plan_work``), ``device`` (``flops``, ``Device``, ``DEVICES``, ``device_for``,
``work_seconds``), ``report`` (``chapter_rows``, ``summary``, ``plan_rows``, ``plan_lines``) and ``__main__``
(the command line).
"""

from .assumptions import ASSUMPTIONS
from .device import DEVICES, Device, cpu_device, device_for, estimate_seconds, flops
from .inputs import Context
from .plan import CHAPTERS, chapter_work, plan_work
from .report import chapter_rows, plan_lines, plan_rows, summary

__all__ = ["ASSUMPTIONS", "CHAPTERS", "DEVICES", "Context", "Device", "chapter_rows", "chapter_work", "cpu_device",
           "device_for", "estimate_seconds", "flops", "plan_lines", "plan_rows", "plan_work", "summary"]
