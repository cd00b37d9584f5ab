"""A Decision Transformer that plays Sokoban: optimal demonstrations, training (cached
and resumable), and batched greedy rollouts.

The agent is transformers' ``DecisionTransformerModel`` (GPT-2 blocks) over the
sequence (R_1, s_1, a_1, R_2, s_2, a_2, ...) of the last ``context`` steps: R is the
return-to-go divided by ``return_scale``, s the 4 x cells one-hot observation of
``sokoban.observe``, a the one-hot action; the action head's 4 outputs are logits,
trained with cross-entropy on every step of windows cut from optimal demonstrations
(breadth-first-search solutions of the train levels).

Training is keyed by every input (``train_key``): the env and agent configs, the seed,
the device type and dtype, and the code version. It writes a checkpoint every
``checkpoint_every`` steps and resumes from it; batch t and its dropout draw depend only
on (seed, t), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from layerlab.core.model import models
from layerlab.core.io import results
from layerlab.laser.sokoban import env as sokoban

TRAIN_TECHNIQUE = "sokoban_train"


@dataclass(frozen=True)
class EnvConfig:
    """Levels (see ``sokoban.generate_one``) and the episode's step limit. The defaults
    are the calibrated ones: gym's Sokoban-v0 room and boxes; reverse play and step limit
    chosen so that the quick profile's agent solves 30-70% of held-out levels (gym's
    step limit is 120; solved episodes here rarely need more than 60)."""

    size: int = 10
    n_boxes: int = 3
    tries: int = 4
    reverse_steps: int = 100
    step_limit: int = 60

    def levels(self, seed: int, split: str, n: int, optimal: bool = False) -> list[sokoban.Level]:
        return sokoban.generate(seed, split, n, size=self.size, n_boxes=self.n_boxes, tries=self.tries,
                                reverse_steps=self.reverse_steps, optimal=optimal)


@dataclass(frozen=True)
class AgentConfig:
    """The Decision Transformer and its training recipe (defaults: the quick profile's).
    Every rollout step runs the whole window, so evaluation cost grows with ``context``."""

    width: int = 128
    depth: int = 6
    heads: int = 4
    context: int = 3             # steps of (R, s, a) the model sees (3 x context tokens)
    n_train: int = 2000          # train levels (one optimal demonstration each)
    steps: int = 1200            # optimiser steps
    batch: int = 128             # windows per step
    lr: float = 1e-3             # peak AdamW learning rate (linear warm-up, cosine decay)
    warmup: float = 0.05         # fraction of steps of warm-up
    weight_decay: float = 1e-4
    dropout: float = 0.1
    return_scale: float = 10.0
    max_timestep: int = 128      # size of the timestep embedding; the step limit must not exceed it
    target_quantile: float = 0.5  # conditioning return: this quantile of the demos' returns
    checkpoint_every: int = 100


def resolve(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype of the ``device`` / ``dtype`` parameters, resolved as for
    the language models (``models.resolve_device`` / ``models.resolve_dtype``), except that
    "auto" on the CPU is float32: the agent is trained here, and its small matrices gain
    nothing from bf16 while its optimiser state would lose precision."""
    dev = models.resolve_device(device)
    if dtype == "auto" and dev.type == "cpu":
        return dev, torch.float32
    return dev, models.resolve_dtype(dtype, dev)


@dataclass
class Demos:
    """Demonstration steps, concatenated over episodes. states: [T, 4 * cells] uint8;
    actions, timestep, start (index of the episode's first step): [T] int64; rtg: [T]
    float32 return-to-go (unscaled); returns: [episodes] float32 episode returns."""

    states: np.ndarray
    actions: np.ndarray
    rtg: np.ndarray
    timestep: np.ndarray
    start: np.ndarray
    returns: np.ndarray


def demonstrations(levels: list[sokoban.Level]) -> Demos:
    """Play each level's recorded solution and keep (state, action, return-to-go)."""
    b = sokoban.batch(levels)
    states, actions, rtg, timestep, start, returns = [], [], [], [], [], []
    for i, lv in enumerate(levels):
        row, first = np.array([i]), sum(len(s) for s in states)
        obs, rew = [], []
        for a in lv.solution:
            obs.append(sokoban.observe(b, row)[0])
            r, solved = sokoban.step(b, row, np.array([a]))
            rew.append(float(r[0]))
        if not solved[0]:
            raise ValueError(f"level {i}: its recorded solution does not solve it")
        states.append(np.array(obs, np.uint8))
        actions.append(np.array(lv.solution))
        rtg.append(np.cumsum(rew[::-1])[::-1].astype(np.float32))
        timestep.append(np.arange(len(rew)))
        start.append(np.full(len(rew), first))
        returns.append(sum(rew))
    cat = np.concatenate
    return Demos(cat(states), cat(actions), cat(rtg), cat(timestep), cat(start), np.array(returns, np.float32))


def build_model(state_dim: int, agent: AgentConfig, env: EnvConfig):
    """A freshly initialised DecisionTransformerModel (eager attention, 4 action logits)."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    config = DecisionTransformerConfig(
        state_dim=state_dim, act_dim=len(sokoban.ACTIONS), hidden_size=agent.width, n_layer=agent.depth,
        n_head=agent.heads, n_inner=4 * agent.width, max_ep_len=agent.max_timestep, action_tanh=False,
        n_positions=3 * agent.context, resid_pdrop=agent.dropout, embd_pdrop=agent.dropout,
        attn_pdrop=agent.dropout, activation_function="gelu_new", use_cache=False, bos_token_id=None,
        eos_token_id=None)
    config._attn_implementation = "eager"
    return DecisionTransformerModel(config)


def _inputs(states, actions, rtg, timestep, agent: AgentConfig, device, dtype) -> dict:
    """Model keyword arguments from [n, k, ...] numpy windows (actions as indices, -1 = none)."""
    one_hot = np.zeros((*actions.shape, len(sokoban.ACTIONS)), np.float32)
    n, k = np.nonzero(actions >= 0)
    one_hot[n, k, actions[n, k]] = 1
    f = lambda x: torch.as_tensor(x, device=device).to(dtype)  # noqa: E731
    return {"states": f(states), "actions": f(one_hot), "returns_to_go": f(rtg[..., None] / agent.return_scale),
            "timesteps": torch.as_tensor(np.array(timestep), device=device, dtype=torch.long),
            "attention_mask": torch.ones(states.shape[:2], device=device, dtype=torch.long)}


def sample_windows(demos: Demos, rng: np.random.Generator, agent: AgentConfig) -> tuple:
    """``agent.batch`` windows of ``agent.context`` steps ending at uniformly drawn demo
    steps, left-padded inside their episode. Returns (states [b, k, S], actions [b, k],
    rtg [b, k], timestep [b, k], valid [b, k] bool)."""
    end = rng.integers(0, len(demos.actions), agent.batch)
    idx = end[:, None] - np.arange(agent.context - 1, -1, -1)[None, :]
    valid = idx >= demos.start[end][:, None]
    idx = np.where(valid, idx, end[:, None])  # padding repeats the last step; masked out of the loss
    return demos.states[idx], demos.actions[idx], demos.rtg[idx], demos.timestep[idx], valid


def train_key(env: EnvConfig, agent: AgentConfig, seed: int, device: torch.device, dtype: torch.dtype) -> str:
    """Covers every input of training (the step limit is not one: it only bounds rollouts)."""
    levels = {k: v for k, v in dataclasses.asdict(env).items() if k != "step_limit"}
    return results.point_key("sokoban-dt", TRAIN_TECHNIQUE, {"levels": levels,
                             "agent": dataclasses.asdict(agent), "seed": seed, "device": device.type,
                             "dtype": str(dtype).removeprefix("torch.")}, "sokoban", "train")


def _lr_factor(t: int, warm: int, total: int) -> float:
    """Linear warm-up over ``warm`` steps, then cosine decay to 0 at ``total``."""
    if t < warm:
        return (t + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, total - warm))))


def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(store: results.ResultStore, env: EnvConfig, agent: AgentConfig, seed: int, device: torch.device,
          dtype: torch.dtype, progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """The trained agent (eval mode, on ``device`` in ``dtype``) and its info dict
    (key, target return, demo statistics). Trained once per key; resumes a killed run."""
    from tqdm import tqdm

    key = train_key(env, agent, seed, device, dtype)
    folder = store.root / "sokoban_agents" / key
    folder.mkdir(parents=True, exist_ok=True)
    final, ckpt = folder / "model.pt", folder / "checkpoint.pt"
    if not final.exists():
        demos = demonstrations(env.levels(seed, "train", agent.n_train, optimal=True))
        torch.manual_seed(seed)
        model = build_model(demos.states.shape[1], agent, env).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=agent.lr, weight_decay=agent.weight_decay)
        warm = max(1, int(agent.warmup * agent.steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: _lr_factor(t, warm, agent.steps))
        step, losses = 0, []
        if ckpt.exists():
            state = torch.load(ckpt, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            step, losses = state["step"], state["losses"]
        model.train()
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        for t in tqdm(range(step, agent.steps), desc="train DT", disable=not progress, mininterval=10):
            rng = np.random.default_rng([seed, t])
            torch.manual_seed(int(rng.integers(2**31)))  # dropout of step t
            s, a, r, ts, valid = sample_windows(demos, rng, agent)
            with autocast:
                logits = model(**_inputs(s, np.where(valid, a, -1), r, ts, agent, device, torch.float32)).action_preds
            target = torch.as_tensor(np.where(valid, a, -100), device=device)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach().float().cpu()))
            if (t + 1) % agent.checkpoint_every == 0 and t + 1 < agent.steps:
                _save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                       "step": t + 1, "losses": losses}, ckpt)
        target_return = float(np.quantile(demos.returns, agent.target_quantile))
        info = {"key": key, "target_return": target_return, "demo_steps": int(len(demos.actions)),
                "demo_mean_length": float(len(demos.actions) / len(demos.returns)),
                "demo_mean_return": float(demos.returns.mean()), "final_loss": float(np.mean(losses[-50:]))}
        _save({"model": model.state_dict(), "info": info, "config": model.config.to_dict()}, final)
        store.put(TRAIN_TECHNIQUE, key, [{"model": "sokoban-dt", "technique": TRAIN_TECHNIQUE, "dataset": "sokoban",
                                          "split": "train", "metric": "loss", "value": v, "n_items": agent.batch,
                                          "step": i, "seed": seed} for i, v in enumerate(losses)])
        ckpt.unlink(missing_ok=True)
    state = torch.load(final, map_location="cpu", weights_only=False)
    model = build_model(sokoban.observation_size((env.size, env.size)), agent, env)
    model.load_state_dict(state["model"])
    return model.to(device=device, dtype=dtype).eval(), state["info"]


@torch.no_grad()
def rollout(model: torch.nn.Module, levels: list[sokoban.Level], env: EnvConfig, agent: AgentConfig,
            target_return: float, chunk: int = 1024) -> pd.DataFrame:
    """Play every level greedily (argmax action), all levels of a chunk stepping together
    through one forward pass per step. An episode ends when solved, at the step limit, or
    when ``sokoban.deadlocked`` (then charged -0.1 for each step left, as if it waited
    out the limit). Per level: solved (0/1), return, steps, deadlocked."""
    if env.step_limit > agent.max_timestep:
        raise ValueError(f"step_limit: {env.step_limit} exceeds the agent's timestep embedding "
                         f"({agent.max_timestep}); allowed: 1..{agent.max_timestep}")
    param = next(model.parameters())
    frames = []
    for c0 in range(0, len(levels), chunk):
        b = sokoban.batch(levels[c0:c0 + chunk])
        n, limit, k = len(b.player), env.step_limit, agent.context
        # the last k steps of every level; all levels start together, so column j of the
        # window is step max(0, t - k + 1) + j for every row
        win_s = np.zeros((n, k, sokoban.observation_size(b.shape)), np.float32)
        win_a, win_r = np.full((n, k), -1), np.zeros((n, k), np.float32)
        ret, steps = np.zeros(n), np.zeros(n, int)
        solved, dead = np.zeros(n, bool), np.zeros(n, bool)
        active = np.arange(n)
        for t in range(limit):
            if not len(active):
                break
            j = min(t, k - 1)
            if t >= k:
                for w in (win_s, win_a, win_r):
                    w[:, :-1] = w[:, 1:].copy()
            win_s[active, j] = sokoban.observe(b, active)
            win_r[active, j] = target_return - ret[active]
            win_a[active, j] = -1
            steps_seen = np.broadcast_to(np.arange(t - j, t + 1), (len(active), j + 1))
            inputs = _inputs(win_s[active, :j + 1], win_a[active, :j + 1], win_r[active, :j + 1], steps_seen,
                             agent, param.device, param.dtype)
            actions = model(**inputs).action_preds[:, -1].float().cpu().numpy().argmax(1)
            win_a[active, j] = actions
            reward, won = sokoban.step(b, active, actions)
            ret[active] += reward
            steps[active] = t + 1
            stuck = ~won & sokoban.deadlocked(b, active)
            ret[active[stuck]] += sokoban.STEP_PENALTY * (limit - t - 1)
            solved[active[won]] = True
            dead[active[stuck]] = True
            active = active[~won & ~stuck]
        frames.append(pd.DataFrame({"level": np.arange(c0, c0 + n), "solved": solved.astype(float), "return": ret,
                                    "steps": steps, "deadlocked": dead.astype(float)}))
    return pd.concat(frames, ignore_index=True)


def describe(model: torch.nn.Module) -> str:
    """One line: blocks, width, heads, parameters."""
    c = model.config
    return json.dumps({"blocks": c.n_layer, "width": c.hidden_size, "heads": c.n_head,
                       "parameters": sum(p.numel() for p in model.parameters())})
