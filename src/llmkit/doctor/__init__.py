"""`llmkit doctor`: probes that diagnose the machine, and the run manifest.

Nothing here imports torch at module level: doctor is how a machine without torch learns which
torch to install.
"""
