"""streamlab: multi-stream graph schedules of LLM decode layers, measured, simulated and explained."""

__version__ = "0.1.0"
