"""What a rehearsal override may change: sizes only.

A rehearsal runs a shipped overlay as it is, with one override file that shrinks it to a CPU
run. The override may touch only the keys below; anything else (a learning rate, a KL coefficient,
a method's init or reference, a judge, an accelerate config, a dtype) would rehearse a different
experiment, and `disallowed` names it.
"""

from __future__ import annotations

from typing import Any, Iterator

# leaf keys that are sizes wherever they appear: steps, batch sizes, lengths, sample counts
SIZE_KEYS = frozenset({
    "steps", "updates", "batch_size", "mini_batch_size", "micro_batch_size", "checkpoint_every",
    "max_length", "max_new_tokens", "max_prompt_length", "max_response_length", "max_conversation_length",
    "judge_max_tokens", "max_prompts", "max_questions",
    "n_pretrain", "n_sft", "n_prefs_train", "n_prefs_eval", "n_ppo_prompts", "n_eval_id", "n_eval_ood",
    "normalize_samples", "rollout_samples",
})
# resources.<stage>.<key>: how much of a machine a job asks for, not what it computes
RESOURCE_KEYS = frozenset({"gpus", "mem_mb", "runtime", "cpus_per_task"})
# lists that may only be cut to a prefix (fewer seeds) or a subset (fewer landscape points)
PREFIX_KEYS = frozenset({"seeds"})
SUBSET_KEYS = frozenset({"alphas"})


def leaves(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield path, value


def lookup(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def disallowed(override: dict, overlay: dict) -> list[str]:
    """Dotted keys of `override` that are not sizes (empty when it only shrinks `overlay`)."""
    bad = []
    for path, value in leaves(override):
        key, dotted = path[-1], ".".join(path)
        if path == ("threads",) or key in SIZE_KEYS and path[0] != "resources":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif path[0] == "resources":
            ok = len(path) == 3 and key in RESOURCE_KEYS
        elif key in PREFIX_KEYS:
            shipped = lookup(overlay, path)
            ok = isinstance(value, list) and isinstance(shipped, list) and value and value == shipped[:len(value)]
        elif key in SUBSET_KEYS:
            shipped = lookup(overlay, path)
            ok = isinstance(value, list) and isinstance(shipped, list) and value and set(value) <= set(shipped)
        elif path[0] == "benchmarks" and key == "data_dir" and len(path) == 3:
            ok = isinstance(value, str)   # where the pinned files come from; salsa.benchmarks.fetch checks them
        else:
            ok = False
        if not ok:
            bad.append(dotted)
    return bad
