"""Running a trained model: sampler chains compiled per backend, generation, editing, likelihood and export.

Each public method of `DiffusionModel` that samples is a function here that
takes the model: `generate.generate_images`, `edit.inpaint` / `encode` /
`decode` / `interpolate`, `likelihood.bits_per_dim`,
`export.export_generator`. They run chains through the model's
`runner.ChainRunner`, which owns the compiled functions.
"""
