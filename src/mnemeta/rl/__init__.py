"""Meta-reinforcement learning substrate: a batched 2D navigation environment, a Gaussian MLP
policy callable with a dict of weights, batched rollouts, the linear feature baseline and the
vanilla policy-gradient surrogate, and TRPO's step (the pieces of MAML-RL, Finn et al. 2017
§5.3); the recurrent policy, trials and PPO's pieces of RL² (Duan et al. 2016).

Pure torch: the environments that need gymnasium, MuJoCo or Meta-World (the ``rl`` extra) are
modules of their own, imported only when such an environment is built, so ``import mnemeta``
(which imports this package through the ``maml_rl`` and ``rl2`` learners) never loads them.
"""

from mnemeta.rl import baseline, ppo
from mnemeta.rl.navigation import Navigation2D, sample_goals
from mnemeta.rl.policy import GaussianMLPPolicy
from mnemeta.rl.recurrent_policy import RecurrentGaussianPolicy
from mnemeta.rl.rollout import Trajectories, concatenate, returns_to_go, rollout
from mnemeta.rl.trials import Trials, trial_rollout
from mnemeta.rl.trpo import TrpoStep, conjugate_gradient, trpo_step
from mnemeta.rl.vpg import estimate_advantages, normalize_per_task, surrogate, vpg_loss

__all__ = [
    "GaussianMLPPolicy",
    "Navigation2D",
    "RecurrentGaussianPolicy",
    "Trajectories",
    "Trials",
    "TrpoStep",
    "baseline",
    "concatenate",
    "conjugate_gradient",
    "estimate_advantages",
    "normalize_per_task",
    "ppo",
    "returns_to_go",
    "rollout",
    "sample_goals",
    "surrogate",
    "trial_rollout",
    "trpo_step",
    "vpg_loss",
]
