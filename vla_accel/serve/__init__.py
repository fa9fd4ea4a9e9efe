"""Serving vla_accel policies to a fleet through NVIDIA Triton Inference Server.

``repository``  generates a Triton model repository for a policy (config.pbtxt + a Python-backend
                model.py that runs vla_accel's own pre/post-processing and a local backend);
``triton_model`` is the code that model.py runs inside the server;
``server``      finds the ``tritonserver`` binary (the nvidia-pytriton wheel, in its own environment
                because it needs numpy < 2), starts it, awaits readiness and stops it;
``client``      a robot-side client that sends raw camera frames + instruction + state and gets
                action chunks back (the node-side path is the ``triton`` backend).

Nothing here imports tritonclient or a runtime at import time.
"""
