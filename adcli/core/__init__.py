"""The bottom layer: errors a user can cause, atomic files and image decoding, devices, progress,
processes (allocator, DDP), and the config sections every layer reads. Imports nothing else of adcli."""
