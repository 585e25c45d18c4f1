"""Other libraries' formats: our checkpoints to and from a diffusers pipeline folder.

diffusers_unet       our UNet <-> UNet2DModel: config and state-dict keys, both ways (no diffusers import)
diffusers_scheduler  our schedule / parameterization / variance <-> DDPMScheduler's config, both ways
diffusers_folder     a checkpoint -> a DDPMPipeline folder, and such a folder -> a checkpoint (needs diffusers)
"""
