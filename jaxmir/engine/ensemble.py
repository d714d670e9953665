"""Several trained models of one architecture used as one: their outputs are averaged.

Runs of one recipe that differ only by seed differ a lot in how their notes decode (the music
quality recipe's seeds scored 0.50-0.71 validation note F1 at nearly the same validation loss),
and the mean of two models' outputs decodes better than either alone. An ensemble is an
inference-only `TrainState`: its `params` hold each member's variables, and its `apply_fn` runs
every member on the same batch (one compiled program) and returns the mean of their outputs:
the logits, for every task here, so a sigmoid or softmax is applied to the mean logit (the
normalised geometric mean of the members' odds)."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxmir.engine.state import TrainState


def ensemble_state(state: TrainState, members: Sequence[dict]) -> TrainState:
    """`state` (any state of the members' model: its `apply_fn` is what each member runs) made
    to evaluate the mean output of `members`, a list of variable dicts as `apply_fn` takes
    them. For inference only: the optimizer state is left as it was and is not used."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    member_apply = state.apply_fn

    def apply_fn(variables: dict, x, train: bool = False, **kwargs):
        if train:
            raise ValueError("an ensemble is for inference only (train=False)")
        outs = [member_apply(v, x, train=False, **kwargs) for v in variables["params"]]
        return jax.tree.map(lambda *o: sum(o) / len(o), *outs)

    return state.replace(params=tuple(members), batch_stats={}, apply_fn=apply_fn)


def members_of(state: TrainState) -> int:
    """How many models `state` evaluates: the ensemble's members, or 1."""
    return len(state.params) if isinstance(state.params, tuple) else 1
