"""`llmkit launch`: the same run rendered for Slurm, Kubernetes, SkyPilot and Docker.

``spec.build_spec`` decides and checks; each registered target (``llmkit.registry.LAUNCH_TARGETS``;
``base.Target``) renders the spec (a pure function returning {file name: text}) and starts it.
"""
