"""gymtrl: NeMo Gym rollouts -> TRL SFT/DPO -> a measurably better model, as DVC stages."""

__version__ = "0.1.0"
