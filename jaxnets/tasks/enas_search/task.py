"""The ENAS search as a task of the training loop (`config.task = "search"`, its fields in `config.search`).

Each step of the loop trains the shared network (`enas_macro_shared`) on one arc, sampled afresh for that
step by the controller (or uniformly, `config.search.strategy = "random"`), through one compiled step: the
arc is a traced input. After each epoch, the controller takes `search.controller_updates_per_epoch` REINFORCE
updates (`jaxnets.nas.reinforce`) on rewards from the held-out split. Evaluation scores `search.eval_arcs` sampled
arcs on the whole held-out split; at the end of the run the final arc is the best of `search.final_arcs`
samples there (`final.py` writes it and the recipe that trains it from scratch).

Randomness: every arc comes from a key that is a function of (config.seed, what it is for, a counter in the
state), so a resumed search samples exactly the arcs an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from jaxnets.models import create_model_from_config, layers
from jaxnets.models.enas import OP_NAMES, arc_length, format_arc, parse_arc
from jaxnets.models.enas.arc import layer_offsets
from jaxnets.nas import reinforce
from jaxnets.nas.controller import MacroController
from jaxnets.nas.uniform import uniform_arc
from jaxnets.optim import create_optimizer, create_schedule
from jaxnets.tasks.enas_search.final import FINAL_ARC_FILE, FINAL_CONFIG_FILE, final_config_source
from jaxnets.tasks.inputs import NetworkInputs
from jaxnets.tasks.supervised import DIVERGENCE_ADVICE, FINITE_METRICS, supervised_step
from jaxnets.train.parallel import DATA_AXIS, platform, replicated

BEST_ARCS_KEPT = 10  # the highest-accuracy arcs the controller updates have scored, kept in the state
# What each key is for, folded into the seed's key: evaluations and the final pick sample with the same keys at
# every call, so their arcs change only as the controller does.
_CONTROLLER_UPDATES, _EVAL_ARCS, _FINAL_ARCS, _RANDOM_ARCS = 1, 2, 3, 4


@flax.struct.dataclass
class SearchState:
    step: jax.Array  # int32: updates of the shared network
    params: Any  # the shared network's (the names of TrainState's, so jaxnets.load_checkpoint reads them)
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key data; each step's arc and dropout keys are folded from it
    controller_params: Any
    controller_opt_state: optax.OptState
    controller_step: jax.Array  # int32: controller updates taken
    baseline: jax.Array  # float32: the EMA of rewards
    best_arcs: jax.Array  # int32 [BEST_ARCS_KEPT, arc length]
    best_accuracies: jax.Array  # float32 [BEST_ARCS_KEPT]; -inf where no arc is kept yet

    def eval_variables(self) -> dict:  # (a search keeps no parameter EMA: its rewards read the shared weights)
        return {"params": self.params, "batch_stats": self.batch_stats}

    def with_model_variables(self, params, batch_stats) -> SearchState:
        return self.replace(params=params, batch_stats=batch_stats)


@dataclasses.dataclass(frozen=True)
class SearchTask:
    model: nn.Module  # ENASMacroSearch
    controller: MacroController
    tx: optax.GradientTransformation  # the shared network's optimizer
    schedule: optax.Schedule
    config: Any  # the resolved run config
    image_shape: tuple[int, int, int]  # (H, W, C) of the network's input
    inputs: NetworkInputs = NetworkInputs(sound=None)  # what the batches hold: images, or clips (sound)

    finite_metrics = FINITE_METRICS
    divergence_advice = DIVERGENCE_ADVICE
    epoch_finite_metrics = {"grad_norm": "gradient norm"}
    epoch_divergence_advice = ("lower config.search.controller_learning_rate or set "
                               "config.search.controller_grad_clip_norm")
    best_metric = "eval_mean_accuracy"
    records_file = "search.jsonl"  # one line per epoch (controller statistics, best arcs) and one for the final pick

    @functools.cached_property
    def controller_tx(self) -> optax.GradientTransformation:
        return reinforce.controller_optimizer(self.config.search)

    @property
    def arc_length(self) -> int:
        return arc_length(self.model.num_layers, self.model.num_branches, self.model.whole_channels)

    @property
    def epoch_updates(self) -> int:
        return self.config.search.controller_updates_per_epoch

    @property
    def epoch_batch_size(self) -> int:  # held-out images of one controller update, over all devices
        return self.config.search.controller_arcs_per_update * self.config.search.controller_batch_size

    # ---- state and the shared network's step -------------------------------------------------------------

    def init_state(self) -> SearchState:
        init_key, controller_key, state_key = jax.random.split(jax.random.key(self.config.seed), 3)
        variables = self.model.init(init_key, jnp.zeros((1, *self.image_shape), jnp.float32), train=False)
        controller_params = self.controller.init(controller_key, jax.random.key(0))["params"]
        return SearchState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(variables["params"]),
            rng=jax.random.key_data(state_key),
            controller_params=controller_params,
            controller_opt_state=self.controller_tx.init(controller_params),
            controller_step=jnp.zeros((), jnp.int32),
            baseline=jnp.zeros((), jnp.float32),
            best_arcs=jnp.zeros((BEST_ARCS_KEPT, self.arc_length), jnp.int32),
            best_accuracies=jnp.full((BEST_ARCS_KEPT,), -jnp.inf, jnp.float32),
        )

    def train_step(self, state: SearchState, batch) -> tuple[SearchState, dict]:
        """One optimizer step of the shared network on a fresh arc (the same on every device: one key)."""
        arc_key, dropout_key = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
        arc = self.sample_arc(state.controller_params, arc_key)

        def apply_fn(variables, images, **kwargs):
            return self.model.apply(variables, images, arc, **kwargs)

        batch = {"image": self.inputs.training(batch), "label": batch["label"]}
        return supervised_step(state, batch, apply_fn=apply_fn, tx=self.tx, schedule=self.schedule,
                               config=self.config, dropout_key=jax.random.fold_in(dropout_key,
                                                                                  jax.lax.axis_index(DATA_AXIS)))

    def sample_arc(self, controller_params, key: jax.Array) -> jax.Array:
        """One arc (int32 [arc length]) from the controller, or uniform with search.strategy="random"."""
        if self.config.search.strategy == "random":
            return self.uniform_arc(key)
        return self.controller.apply({"params": controller_params}, key)["arc"]

    def uniform_arc(self, key: jax.Array) -> jax.Array:
        m = self.model
        return uniform_arc(key, num_layers=m.num_layers, num_branches=m.num_branches,
                           whole_channels=m.whole_channels, num_filters=m.num_filters)

    def _uniform_sample(self, key: jax.Array) -> dict:
        """A uniform arc with the statistics the controller reports (the random search has no log-probability)."""
        m = self.model
        arc = self.uniform_arc(key)
        heads = np.zeros(self.arc_length, bool)
        offsets = layer_offsets(m.num_layers, m.num_branches, m.whole_channels)
        for k in range(m.num_layers):
            heads[offsets[k]:offsets[k + 1] - k] = True
        skip_bits = max(int((~heads).sum()), 1)
        zero = jnp.zeros((), jnp.float32)
        return {"arc": arc, "entropy": zero, "log_prob": zero, "skip_penalty": zero,
                "skip_rate": jnp.sum(jnp.where(heads, 0, arc)) / skip_bits}

    def _stream_key(self, purpose: int) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.config.seed), purpose)

    def _correct(self, state: SearchState, arcs, images, labels, mask=None) -> jax.Array:
        """This device's correct predictions of each arc (float32 [n]), one arc after the other, BN in inference
        mode. A scan, not a vmap, so that each arc runs only its own ops (`lax.switch`)."""
        variables = state.eval_variables()
        mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)

        def one(_, arc):
            logits = self.model.apply(variables, images, arc, train=False)
            return None, jnp.sum((jnp.argmax(logits, -1) == labels) * mask)

        return jax.lax.scan(one, None, arcs)[1]

    # ---- evaluation: arcs scored on the whole held-out split --------------------------------------------

    def eval_arcs(self, state: SearchState, purpose: int, count: int) -> jax.Array:
        keys = jax.random.split(self._stream_key(purpose), count)
        if purpose == _RANDOM_ARCS:
            return jax.vmap(self.uniform_arc)(keys)
        return jax.vmap(functools.partial(self.sample_arc, state.controller_params))(keys)

    def eval_step(self, state: SearchState, batch) -> dict:
        arcs = self.eval_arcs(state, _EVAL_ARCS, self.config.search.eval_arcs)
        sums = {"correct": self._correct(state, arcs, self.inputs.evaluation(batch), batch["label"], batch["mask"]),
                "count": jnp.sum(batch["mask"].astype(jnp.float32))}
        return jax.lax.psum(sums, DATA_AXIS)

    @staticmethod
    def eval_metrics(sums: dict) -> dict:
        accuracy = np.asarray(sums["correct"]) / float(sums["count"])
        return {"eval_mean_accuracy": float(accuracy.mean()), "eval_best_accuracy": float(accuracy.max()),
                "eval_examples": float(sums["count"])}

    # ---- between epochs: the controller learns on held-out batches --------------------------------------

    def epoch_update(self, state: SearchState, batch) -> tuple[SearchState, dict]:
        """One controller update, per device: `batch` holds controller_arcs_per_update x controller_batch_size
        held-out images; arc a is scored on row block a of every device's shard (its accuracy is psum'd)."""
        config = self.config
        arcs_per_update = config.search.controller_arcs_per_update
        images = self.inputs.evaluation(batch)
        images = images.reshape(arcs_per_update, -1, *images.shape[1:])
        labels = batch["label"].reshape(arcs_per_update, -1)
        key = jax.random.fold_in(self._stream_key(_CONTROLLER_UPDATES), state.controller_step)
        keys = jax.random.split(key, arcs_per_update)
        variables = state.eval_variables()
        params = state.controller_params
        random_search = config.search.strategy == "random"
        loss_grad = jax.grad(functools.partial(reinforce.controller_loss, self.controller,
                                               skip_weight=config.search.controller_skip_weight))

        def one_arc(carry, inputs):
            baseline, grad_sum = carry
            key, x, y = inputs
            sample = self._uniform_sample(key) if random_search else self.controller.apply({"params": params}, key)
            logits = self.model.apply(variables, x, sample["arc"], train=False)
            correct = jax.lax.psum(jnp.sum(jnp.argmax(logits, -1) == y).astype(jnp.float32), DATA_AXIS)
            accuracy = correct / jax.lax.psum(jnp.float32(y.shape[0]), DATA_AXIS)
            reward = accuracy + config.search.controller_entropy_weight * sample["entropy"]
            baseline = reinforce.updated_baseline(baseline, reward, config.search.controller_baseline_decay)
            if not random_search:
                grad_sum = jax.tree.map(jnp.add, grad_sum, loss_grad(params, sample["arc"], reward - baseline))
            stats = {"arc": sample["arc"], "accuracy": accuracy, "reward": reward, "entropy": sample["entropy"],
                     "log_prob": sample["log_prob"], "skip_rate": sample["skip_rate"],
                     "skip_penalty": sample["skip_penalty"]}
            return (baseline, grad_sum), stats

        zeros = jax.tree.map(jnp.zeros_like, params)
        (baseline, grad_sum), stats = jax.lax.scan(one_arc, (state.baseline, zeros), (keys, images, labels))
        grads = jax.tree.map(lambda g: g / arcs_per_update, grad_sum)
        if random_search:  # rewards are logged for comparison; nothing learns
            controller_params, opt_state = params, state.controller_opt_state
        else:
            updates, opt_state = self.controller_tx.update(grads, state.controller_opt_state, params)
            controller_params = optax.apply_updates(params, updates)
        arcs = jnp.concatenate([state.best_arcs, stats["arc"]])
        accuracies = jnp.concatenate([state.best_accuracies, stats["accuracy"]])
        # An arc already kept (or sampled earlier in this update) keeps its first place: a converged controller
        # samples one arc again and again, and the list should still show the 10 best different ones.
        same = jnp.all(arcs[:, None, :] == arcs[None, :, :], axis=-1)
        repeated = jnp.any(jnp.tril(same & jnp.isfinite(accuracies)[None, :], k=-1), axis=1)  # (not empty slots)
        best_accuracies, best = jax.lax.top_k(jnp.where(repeated, -jnp.inf, accuracies), BEST_ARCS_KEPT)
        new_state = state.replace(
            controller_params=controller_params, controller_opt_state=opt_state,
            controller_step=state.controller_step + 1, baseline=baseline, best_arcs=arcs[best],
            best_accuracies=best_accuracies,
        )
        metrics = {k: jnp.mean(v) for k, v in stats.items() if k != "arc"}
        metrics.update(arcs=stats["arc"], baseline=baseline, grad_norm=optax.tree.norm(grads))
        return new_state, metrics

    def describe_epoch(self, state: SearchState, updates: list[dict]) -> tuple[dict, dict]:
        """Host side: an epoch's controller updates -> (scalars for metrics.jsonl, a search.jsonl record)."""
        arcs = np.concatenate([np.asarray(u["arcs"]) for u in updates])
        scalars = {f"controller_{k}": float(np.mean([np.asarray(u[k]) for u in updates]))
                   for k in ("reward", "accuracy", "entropy", "log_prob", "skip_rate", "skip_penalty", "grad_norm")}
        scalars["controller_baseline"] = float(np.asarray(updates[-1]["baseline"]))
        histogram = self.op_histogram(arcs)
        scalars.update({f"controller_op_{name}": share for name, share in histogram.items()})
        record = {
            **scalars,
            "controller_updates": int(np.asarray(state.controller_step)),
            "op_histogram": histogram,
            "sampled_arcs": len(arcs),
            "sampled_arcs_sha256": hashlib.sha256(arcs.astype(np.int32).tobytes()).hexdigest(),
            "best_arcs": self._best_arcs(np.asarray(state.best_arcs), np.asarray(state.best_accuracies)),
        }
        return scalars, record

    def op_histogram(self, arcs: np.ndarray) -> dict[str, float]:
        """The share of layers that chose each op (whole-channel mode; empty in channel mode)."""
        if not self.model.whole_channels:
            return {}
        offsets = layer_offsets(self.model.num_layers, self.model.num_branches, True)[:-1]
        ops = np.asarray(arcs)[:, list(offsets)].ravel()
        return {OP_NAMES[op]: float(np.mean(ops == op)) for op in range(self.model.num_branches)}

    def _best_arcs(self, arcs: np.ndarray, accuracies: np.ndarray) -> list[dict]:
        seen, best = set(), []
        for arc, accuracy in zip(arcs, accuracies, strict=True):
            text = " ".join(map(str, arc.tolist()))
            if np.isfinite(accuracy) and text not in seen:
                seen.add(text)
                best.append({"arc": text, "accuracy": float(accuracy)})
        return best

    # ---- the end of the search: the final arc -----------------------------------------------------------

    def complete(self, trainer, state: SearchState, eval_batches, workdir: str) -> tuple[dict[str, str], dict]:
        """-> (files for the workdir, a search.jsonl record): the final arc and the recipe that trains it."""
        picked = self.final_pick(trainer.mesh, state, eval_batches, trainer.shard)
        samples = picked["samples"]
        best = int(np.argmax(samples["accuracies"]))
        accuracy = float(samples["accuracies"][best])
        arc_text = self.final_text(samples["arcs"][best])
        files = {FINAL_ARC_FILE: arc_text,
                 FINAL_CONFIG_FILE: final_config_source(self.config, self.model, " ".join(arc_text.split()),
                                                        workdir, accuracy)}
        record = {"final_arc": " ".join(arc_text.split()), "final_accuracy": accuracy}
        for name, scored in picked.items():
            accuracies = scored["accuracies"]
            record[name] = {"count": len(accuracies), "best_accuracy": float(accuracies.max()),
                            "median_accuracy": float(np.median(accuracies)),
                            "mean_accuracy": float(accuracies.mean())}
        return files, record

    def final_pick(self, mesh, state: SearchState, eval_batches, shard) -> dict:
        """The best of `search.final_arcs` samples on the whole held-out split, and (with the controller) as
        many uniform random arcs scored the same way for comparison. Collective: every process calls it."""
        # (traced here, outside the trainer's steps)
        with layers.conv_lowering(self.config.conv_lowering, platform(mesh)):
            return self._final_pick(mesh, state, eval_batches, shard)

    def _final_pick(self, mesh, state: SearchState, eval_batches, shard) -> dict:
        count = self.config.search.final_arcs
        purposes = {"samples": _FINAL_ARCS}
        if self.config.search.strategy == "enas":
            purposes["uniform"] = _RANDOM_ARCS

        def correct(state, arcs, batch):
            sums = (self._correct(state, arcs, self.inputs.evaluation(batch), batch["label"], batch["mask"]),
                    jnp.sum(batch["mask"].astype(jnp.float32)))
            return jax.lax.psum(sums, DATA_AXIS)

        score = jax.jit(jax.shard_map(correct, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)), out_specs=P()))
        result = {}
        for name, purpose in purposes.items():
            arcs = jax.jit(self.eval_arcs, static_argnums=(1, 2), out_shardings=replicated(mesh))(state, purpose,
                                                                                                  count)
            totals, examples = np.zeros(count), 0.0
            for batch in eval_batches:
                batch_correct, batch_count = score(state, arcs, shard(batch))
                totals += np.asarray(batch_correct)
                examples += float(batch_count)
            result[name] = {"arcs": np.asarray(arcs), "accuracies": totals / examples}
        return result

    def final_text(self, arc: np.ndarray) -> str:
        """final_arc.txt: the official format, one layer per line."""
        m = self.model
        parsed = parse_arc(" ".join(map(str, arc.tolist())), m.num_layers, m.num_branches, m.whole_channels)
        offsets = layer_offsets(m.num_layers, m.num_branches, m.whole_channels)
        flat = format_arc(parsed).split()
        return "".join(" ".join(flat[offsets[k]:offsets[k + 1]]) + "\n" for k in range(m.num_layers))


def build(config, dataset, steps_per_epoch: int) -> SearchTask:
    model = create_model_from_config(config, dataset.num_classes)
    search = config.search
    controller = MacroController(
        num_layers=model.num_layers, num_branches=model.num_branches, whole_channels=model.whole_channels,
        num_filters=model.num_filters, lstm_size=search.controller_lstm_size,
        temperature=search.controller_temperature, tanh_constant=search.controller_tanh_constant,
        skip_target=search.controller_skip_target,
    )
    return SearchTask(model=model, controller=controller, tx=create_optimizer(config, steps_per_epoch),
                      schedule=create_schedule(config, steps_per_epoch), config=config,
                      image_shape=tuple(dataset.image_shape), inputs=NetworkInputs.of(config))
