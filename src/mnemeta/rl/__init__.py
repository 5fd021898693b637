"""Meta-reinforcement learning substrate: a batched 2D navigation environment, a Gaussian MLP
policy callable with a dict of weights, batched rollouts, the linear feature baseline and the
vanilla policy-gradient surrogate, and TRPO's step (the pieces of MAML-RL, Finn et al. 2017
§5.3).

Pure torch: the environments that need gymnasium, MuJoCo or Meta-World (the ``rl`` extra) are
modules of their own, imported only when such an environment is built, so ``import mnemeta``
(which imports this package through the ``maml_rl`` learner) never loads them.
"""

from mnemeta.rl import baseline
from mnemeta.rl.navigation import Navigation2D, sample_goals
from mnemeta.rl.policy import GaussianMLPPolicy
from mnemeta.rl.rollout import Trajectories, concatenate, returns_to_go, rollout
from mnemeta.rl.trpo import TrpoStep, conjugate_gradient, trpo_step
from mnemeta.rl.vpg import estimate_advantages, normalize_per_task, surrogate, vpg_loss

__all__ = [
    "GaussianMLPPolicy",
    "Navigation2D",
    "Trajectories",
    "TrpoStep",
    "baseline",
    "concatenate",
    "conjugate_gradient",
    "estimate_advantages",
    "normalize_per_task",
    "returns_to_go",
    "rollout",
    "sample_goals",
    "surrogate",
    "trpo_step",
    "vpg_loss",
]
