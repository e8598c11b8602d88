"""One config schema (dataclasses + omegaconf), loaded and validated up front."""
from rlplat.config.errors import ConfigError
from rlplat.config.load import load_config, save_config
from rlplat.config.schema import (
    AlgorithmConfig,
    CoefConfig,
    DataConfig,
    DivergenceTermConfig,
    DPHRLConfig,
    ModelConfig,
    NashMPConfig,
    RayConfig,
    ResourcesConfig,
    RewardConfig,
    RoleModelConfig,
    RolesConfig,
    RolloutConfig,
    RolloutCorrectionConfig,
    RunConfig,
    TrainerConfig,
    to_container,
)

__all__ = [
    "AlgorithmConfig", "CoefConfig", "ConfigError", "DataConfig", "DivergenceTermConfig", "DPHRLConfig",
    "ModelConfig", "NashMPConfig", "RayConfig", "ResourcesConfig", "RewardConfig", "RoleModelConfig",
    "RolesConfig", "RolloutConfig", "RolloutCorrectionConfig", "RunConfig", "TrainerConfig", "load_config", "save_config", "to_container",
]
