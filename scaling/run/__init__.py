"""One training run: its typed config (run_config), the loop (train), the learning-rate schedules (lr_schedule),
checkpoints on SIGTERM (preemption), tracking, a gang's shared state (distributed), process set-up before JAX
starts and the local Ray head (runtime), which processor this is (processor), export to safetensors (export)."""
