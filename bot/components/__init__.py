"""Components beside checkpoints: VAEs (A1111's "SD VAE"), found in models/VAE (A1111) or models/vae
(ComfyUI), registered and hashed like LoRAs, chosen per checkpoint or per job."""
