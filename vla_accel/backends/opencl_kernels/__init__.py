"""OpenCL C sources of the opencl backend (package data, read with importlib.resources / a path)."""
