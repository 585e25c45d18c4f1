"""The diffusion mathematics as small parts: schedules, the forward process, parameterizations,
reverse variances, losses, weightings, timestep samplers and the likelihood; cold diffusion's degradations,
its process and the prior of its fully degraded images.

    from diffusion_lab.diffusion import CosineSchedule, Diffusion
    diffusion = Diffusion(CosineSchedule(1000), prediction="eps", variance="fixed_small")
"""

from __future__ import annotations

from .cold import ColdDiffusion
from .degradations import (
    DEGRADATIONS,
    Degradation,
    Downsample,
    GaussianBlur,
    GaussianNoise,
    SquareMask,
    build_degradation,
)
from .gaussian import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    prior_bpd,
    q_mean_variance,
    q_posterior,
    q_sample,
    q_step_sample,
)
from .likelihood import calc_bpd_loop
from .losses import (
    LOSSES,
    HybridLoss,
    Loss,
    RestorationLoss,
    SimpleLoss,
    VLBLoss,
    build_loss,
    check_compatible,
    vb_terms_bpd,
)
from .parameterizations import (
    PREDICTIONS,
    EpsPrediction,
    Parameterization,
    VPrediction,
    X0Prediction,
    build_prediction,
)
from .prior import GaussianMixturePrior
from .process import DenoiserOutput, Diffusion, ModelFn, parse_respacing
from .schedules import (
    SCHEDULES,
    CosineSchedule,
    LinearSchedule,
    NoiseSchedule,
    QuadraticSchedule,
    SigmoidSchedule,
    build_schedule,
)
from .timesteps import (
    TIMESTEP_SAMPLERS,
    ImportanceTimestepSampler,
    TimestepSampler,
    UniformTimestepSampler,
    build_timestep_sampler,
)
from .variances import (
    VARIANCES,
    FixedLargeVariance,
    FixedSmallVariance,
    LearnedRangeVariance,
    LearnedVariance,
    ReverseVariance,
    build_variance,
)
from .weightings import (
    WEIGHTINGS,
    MinSNRWeighting,
    P2Weighting,
    SNRWeighting,
    UniformWeighting,
    VLBWeighting,
    Weighting,
    build_weighting,
)

__all__ = [
    "ColdDiffusion",
    "CosineSchedule",
    "DEGRADATIONS",
    "Degradation",
    "DenoiserOutput",
    "Diffusion",
    "Downsample",
    "EpsPrediction",
    "FixedLargeVariance",
    "FixedSmallVariance",
    "GaussianBlur",
    "GaussianMixturePrior",
    "GaussianNoise",
    "HybridLoss",
    "ImportanceTimestepSampler",
    "LOSSES",
    "LearnedRangeVariance",
    "LearnedVariance",
    "LinearSchedule",
    "Loss",
    "MinSNRWeighting",
    "ModelFn",
    "NoiseSchedule",
    "P2Weighting",
    "PREDICTIONS",
    "Parameterization",
    "QuadraticSchedule",
    "RestorationLoss",
    "ReverseVariance",
    "SCHEDULES",
    "SNRWeighting",
    "SigmoidSchedule",
    "SimpleLoss",
    "SquareMask",
    "TIMESTEP_SAMPLERS",
    "TimestepSampler",
    "UniformTimestepSampler",
    "UniformWeighting",
    "VARIANCES",
    "VLBLoss",
    "VLBWeighting",
    "VPrediction",
    "WEIGHTINGS",
    "Weighting",
    "X0Prediction",
    "build_degradation",
    "build_loss",
    "build_prediction",
    "build_schedule",
    "build_timestep_sampler",
    "build_variance",
    "build_weighting",
    "calc_bpd_loop",
    "check_compatible",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "parse_respacing",
    "prior_bpd",
    "q_mean_variance",
    "q_posterior",
    "q_sample",
    "q_step_sample",
    "vb_terms_bpd",
]
