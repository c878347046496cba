"""ControlNet models (as the A1111 extension and ComfyUI users keep them): what a file is, their registry, the units a job asks for."""
