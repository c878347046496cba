"""A1111's samplers, run as A1111 runs them: k-diffusion's algorithms in sigma space, its schedule
types, its step noise (each picture's own generator, ENSD) and its Brownian tree.

- `sigmas.py`: the model's discrete noise levels and the schedule types (Karras, Exponential, ...).
- `solvers.py`: the sampling algorithms, each a generator that asks for the denoised picture at a
  noise level and is sent it back, so diffusers' pipelines keep doing the model calls.
- `scheduler.py`: the diffusers scheduler that drives a solver inside a pipeline's loop.

Used for SD1, SD2 and SDXL checkpoints (epsilon and v-prediction); EDM, zero-terminal-SNR and flow
models keep diffusers' schedulers (gpu_worker/samplers.py), as A1111 has no k-diffusion form of them.
"""
